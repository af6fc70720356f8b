"""Shared LLM layer: backends behind one interface (backend.py), the answer cache (cache.py) and the
Motif judge (judge.py). Heavy backends (transformers, vLLM) are imported only when chosen."""
from stages.llm.backend import LazyBackend, LLMBackend, LLMError, judge_mode, make_backend, model_id_for
from stages.llm.cache import AnswerCache, CacheError, CallStats, cached_generate, cached_margins

__all__ = ["LLMBackend", "LazyBackend", "LLMError", "make_backend", "model_id_for", "judge_mode",
           "AnswerCache", "CacheError", "CallStats", "cached_generate", "cached_margins"]
