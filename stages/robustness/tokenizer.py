"""Stage tokenizer: one byte-level BPE for the whole family, trained on every task's training split,
or the tokenizer.json of a pretrained checkpoint folder (`pretrained`, the paper profile's Pythia)."""

from __future__ import annotations

import logging
from pathlib import Path

from stages.common import artifacts
from stages.common.stage import StageContext
from stages.robustness import tok as T
from stages.robustness.tasks import EXAMPLES_SCHEMA

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> None:
    cfg = ctx.params["tokenizer"]
    if cfg.get("pretrained"):
        path = Path(cfg["pretrained"]) / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"tokenizer.pretrained: {path} does not exist (no hub downloads)")
        tok = T.load(path)
    else:
        texts = []
        for path in ctx.input_list("examples"):
            texts += [
                r["text"] for r in artifacts.read_table(path, EXAMPLES_SCHEMA).to_pylist() if r["split"] == "train"
            ]
        tok = T.train_bpe(texts, cfg["vocab_size"])
    # Every split of every task must encode (a user corpus may hold characters the BPE never saw).
    for path in ctx.input_list("examples"):
        for r in artifacts.read_table(path, EXAMPLES_SCHEMA).to_pylist():
            T.encode(tok, r["text"], f"{path}: split {r['split']} example {r['example']}")
    log.info("tokenizer: %d tokens", tok.get_vocab_size())
    with artifacts.atomic_path(ctx.outputs["tokenizer"]) as tmp:
        tok.save(str(tmp))
    ctx.write_json("metrics", {"vocab_size": tok.get_vocab_size(), "source": cfg.get("pretrained") or "bpe"})
