"""The interface every LLM backend implements: chat generation and yes/no log-odds, and its error type.

The backends (local.py, openai_server.py, vllm_offline.py) import only this module; factory.py picks one
from an `llm:` params block.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

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

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for backends holding nothing
        """Release the model or connections (no-op by default)."""


def logsumexp(values: Sequence[float]) -> float:
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    top = max(finite)
    return top + math.log(sum(math.exp(v - top) for v in finite))
