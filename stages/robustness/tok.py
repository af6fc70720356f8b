"""One byte-level BPE tokenizer for the whole model family (HuggingFace `tokenizers`), and the one
segment-wise encoding every stage uses.

A prompt is encoded segment by segment: ids(instructions + content) + attack-before + ids(chunk) +
attack-after + ids(answer), so attack tokens sit exactly at a token boundary and a clean example is the
same ids with both attack parts empty. The alphabet is printable ASCII plus what the training text holds;
a character outside it becomes <unk>, which `encode` refuses with an error naming the text.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, UNK = "<pad>", "<unk>"


class TokenizerError(ValueError):
    """A text the tokenizer cannot encode (a character outside its alphabet)."""


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # ByteLevel maps bytes to printable stand-ins; seed the alphabet with those of printable ASCII only,
    # so unseen non-ASCII characters stay unknown instead of silently becoming byte pieces.
    alphabet = sorted(
        {
            c
            for ch in string.printable
            for c, _ in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(ch)
            for c in c
        }
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, UNK],
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet) + 64,
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return tok


def load(path: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def special_ids(tok: Tokenizer) -> set[int]:
    ids = {tok.token_to_id(t) for t in (PAD, UNK)}
    ids |= {tok.token_to_id(t.content) for t in tok.get_added_tokens_decoder().values()}
    return {i for i in ids if i is not None}


def pad_id(tok: Tokenizer) -> int:
    for name in (PAD, "<|padding|>", "<|endoftext|>"):
        if tok.token_to_id(name) is not None:
            return tok.token_to_id(name)
    return 0


def encode(tok: Tokenizer, text: str, where: str = "text") -> list[int]:
    """Ids of `text` without special tokens; an unknown character is an error naming `where`."""
    if not text:
        return []
    enc = tok.encode(text, add_special_tokens=False)
    unk = tok.token_to_id(UNK)
    if unk is not None and unk in enc.ids:
        bad = sorted({text[s:e] for i, (s, e) in zip(enc.ids, enc.offsets) if i == unk})
        raise TokenizerError(f"{where}: the tokenizer cannot encode {bad!r} in {text[:60]!r}")
    return list(enc.ids)


def survives_roundtrip(tok: Tokenizer, ids: list[int]) -> bool:
    """Do these attack ids come back unchanged after decode -> re-encode (the reference's filter)?"""
    text = tok.decode(ids, skip_special_tokens=False)
    return tok.encode(text, add_special_tokens=False).ids == list(ids)
