"""Shared LLM layer: the backend interface (backend.py), the factory that builds a backend from an `llm:`
params block (factory.py), the answer cache (cache.py) and the preference judge (judge.py). Heavy backends
(transformers, vLLM) are imported only when chosen."""
from stages.llm.backend import LLMBackend, LLMError, Messages
from stages.llm.cache import AnswerCache, CacheError, CallStats, cached_generate, cached_margins
from stages.llm.factory import LazyBackend, make_backend, model_id_for
from stages.llm.judge import judge_mode

__all__ = ["LLMBackend", "LazyBackend", "LLMError", "Messages", "make_backend", "model_id_for", "judge_mode",
           "AnswerCache", "CacheError", "CallStats", "cached_generate", "cached_margins"]
