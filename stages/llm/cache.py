"""Every raw LLM answer, kept so that an interrupted annotation resumes where it stopped and a re-run
asks the model nothing twice.

An entry is keyed by the sha256 of (prompt messages, model_id, request params: the sampling params
for generation, the op name for yes/no ratings). The cache is a folder of Parquet parts: each flush
(every `flush_every` new entries, and on close, also when the run fails) writes one new part
atomically, so a flush costs only its new entries and two processes sharing the folder never
overwrite each other's answers. Loading unions the parts; when there are many, closing merges the
parts it read into one. A part that cannot be read is an error naming it; `recover=True` moves it
aside (to `<part>.corrupt`) and its answers are asked again: nothing is discarded silently.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from stages.common.artifacts import atomic_path
from stages.llm.backend import LLMBackend, Messages

log = logging.getLogger(__name__)
PART_GLOB = "part-*.parquet"
CACHE_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("op", pa.string(), nullable=False),       # "generate" or "yes_no_margin"
    pa.field("request", pa.string(), nullable=False),  # the messages as JSON, for audits
    pa.field("text", pa.string()),                     # generated answer
    pa.field("value", pa.float64()),                   # yes/no margin
])
_part_counter = itertools.count()


class CacheError(RuntimeError):
    """An answer-cache part is truncated or corrupt."""


class Entry(NamedTuple):
    key: str
    model_id: str
    op: str
    request: str
    text: str | None = None
    value: float | None = None


def request_key(messages: Messages, model_id: str, params: Mapping[str, Any]) -> str:
    blob = json.dumps({"messages": list(messages), "model_id": model_id, "params": dict(params)},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class AnswerCache:
    def __init__(self, path: str | os.PathLike, flush_every: int = 256, recover: bool = False,
                 compact_above: int = 32):
        self.path = Path(path)
        self.flush_every = max(1, int(flush_every))
        self.compact_above = compact_above
        self.path.mkdir(parents=True, exist_ok=True)
        self._answers: dict[str, str | float] = {}
        self._rows: dict[str, Entry] = {}  # every known entry, for compaction
        self._pending: list[Entry] = []
        self._parts: list[Path] = []
        for part in sorted(self.path.glob(PART_GLOB)):
            self._load_part(part, recover)

    def _load_part(self, part: Path, recover: bool) -> None:
        try:
            table = pq.read_table(part)
            missing = [n for n in CACHE_SCHEMA.names if n not in table.column_names]
            if missing:
                raise ValueError(f"missing column(s) {missing}")
        except Exception as exc:
            aside = part.with_name(part.name + ".corrupt")
            if not recover:
                raise CacheError(
                    f"{part}: answer-cache part is truncated or corrupt ({exc}); open the cache with "
                    f"recover=True (annotate.recover_cache: true) to move it aside to {aside.name} and "
                    f"re-ask its answers, or delete it") from exc
            os.replace(part, aside)
            log.warning("answer cache: moved unreadable %s aside to %s", part, aside)
            return
        for row in table.select(CACHE_SCHEMA.names).to_pylist():
            self._remember(Entry(**row))
        self._parts.append(part)

    def _remember(self, entry: Entry) -> None:
        self._rows[entry.key] = entry
        self._answers[entry.key] = entry.text if entry.op == "generate" else (
            math.nan if entry.value is None else float(entry.value))

    def __len__(self) -> int:
        return len(self._answers)

    def __contains__(self, key: str) -> bool:
        return key in self._answers

    def get(self, key: str) -> str | float | None:
        """The cached text (generate) or margin (yes_no_margin), None when not cached."""
        return self._answers.get(key)

    def put_many(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if entry.key not in self._answers:
                self._remember(entry)
                self._pending.append(entry)
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the pending entries as one new part (atomic)."""
        if not self._pending:
            return
        part = self.path / f"part-{time.time_ns():020d}-{os.getpid()}-{next(_part_counter)}.parquet"
        self._write(part, self._pending)
        self._parts.append(part)
        self._pending = []

    def _write(self, part: Path, entries: Sequence[Entry]) -> None:
        table = pa.Table.from_pylist([e._asdict() for e in entries], schema=CACHE_SCHEMA)
        with atomic_path(part) as tmp:
            pq.write_table(table, tmp, compression="zstd")

    def close(self) -> None:
        """Flush; merge the parts into one when there are more than `compact_above`."""
        self.flush()
        if len(self._parts) > self.compact_above:
            merged = self.path / f"part-{time.time_ns():020d}-{os.getpid()}-{next(_part_counter)}.parquet"
            self._write(merged, list(self._rows.values()))
            for part in self._parts:  # only parts this process read or wrote: all are in `merged`
                part.unlink(missing_ok=True)
            self._parts = [merged]

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # also on an exception: answers already paid for are kept


@dataclass
class CallStats:
    """How many requests went to the model and how many the cache answered."""

    model_calls: int = 0
    cache_hits: int = 0


def _cached(backend: LLMBackend, cache: AnswerCache, prompts: Sequence[Messages], op: str,
            params: Mapping[str, Any], batch_size: int, stats: CallStats | None, progress=None) -> list:
    keys = [request_key(p, backend.model_id, {"op": op, **params}) for p in prompts]
    todo: dict[str, Messages] = {}
    for key, prompt in zip(keys, prompts):
        if key not in cache and key not in todo:
            todo[key] = prompt
    if stats is not None:
        stats.model_calls += len(todo)
        stats.cache_hits += len(prompts) - len(todo)
    items = list(todo.items())
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = [p for _, p in chunk]
        answers = (backend.generate(batch, params) if op == "generate" else backend.yes_no_margins(batch))
        cache.put_many(
            Entry(k, backend.model_id, op, json.dumps(p, ensure_ascii=False),
                  text=a if op == "generate" else None, value=None if op == "generate" else float(a))
            for (k, p), a in zip(chunk, answers))
        if progress is not None:
            progress(len(chunk))
    return [cache.get(k) for k in keys]


def cached_generate(backend: LLMBackend, cache: AnswerCache, prompts: Sequence[Messages],
                    sampling: Mapping[str, Any], batch_size: int = 8, stats: CallStats | None = None,
                    progress=None) -> list[str]:
    """backend.generate through the cache: only prompts never asked with these params reach the model."""
    return _cached(backend, cache, prompts, "generate", sampling, batch_size, stats, progress)


def cached_margins(backend: LLMBackend, cache: AnswerCache, prompts: Sequence[Messages],
                   batch_size: int = 8, stats: CallStats | None = None, progress=None) -> list[float]:
    """backend.yes_no_margins through the cache."""
    return _cached(backend, cache, prompts, "yes_no_margin", {}, batch_size, stats, progress)
