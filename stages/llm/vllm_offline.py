"""Offline batched generation with vLLM on a GPU machine (the paper annotated with Llama-2-chat 70B
through vLLM). vLLM is imported on first use only; it is not installed on CPU machines.

yes/no ratings are exact: each chat prompt is extended by each candidate first token ("yes", "Yes",
"no", "No", ...) and vLLM returns that token's log-probability (`prompt_logprobs=0`), so nothing
depends on a top-k cut-off.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stages.llm.backend import NO_WORDS, YES_WORDS, LLMBackend, LLMError, Messages, logsumexp


def _import_vllm():
    try:
        import vllm
        from vllm.inputs import TokensPrompt
    except ImportError as exc:
        raise LLMError("llm.backend is vllm but the vllm package is not installed here; run on a GPU "
                       "machine with `pip install vllm`, or use backend openai (a `vllm serve` server) "
                       "or local") from exc
    return vllm, TokensPrompt


class VLLMBackend(LLMBackend):
    def __init__(self, cfg: Mapping[str, Any]):
        vllm, self._TokensPrompt = _import_vllm()
        self._SamplingParams = vllm.SamplingParams
        v = cfg["vllm"]
        self.model_id = f"vllm/{cfg['model']}"
        try:
            self.llm = vllm.LLM(model=str(cfg["model"]), tensor_parallel_size=int(v["tensor_parallel"]),
                                gpu_memory_utilization=float(v["gpu_memory_utilization"]),
                                max_model_len=int(v["max_model_len"]), seed=int(cfg["sampling"]["seed"]))
        except Exception as exc:
            raise LLMError(f"vLLM cannot load {cfg['model']!r}: {exc}") from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.yes_ids = self._first_tokens(YES_WORDS)
        self.no_ids = self._first_tokens(NO_WORDS)

    def _first_tokens(self, words: Sequence[str]) -> list[int]:
        return sorted({self.tokenizer.encode(w, add_special_tokens=False)[0] for w in words})

    def generate(self, prompts: Sequence[Messages], sampling: Mapping[str, Any]) -> list[str]:
        if not prompts:
            return []
        kwargs = {"temperature": float(sampling["temperature"]), "max_tokens": int(sampling["max_tokens"]),
                  "seed": sampling.get("seed")}
        if sampling.get("top_p") is not None:
            kwargs["top_p"] = float(sampling["top_p"])
        if sampling.get("top_k") is not None:
            kwargs["top_k"] = int(sampling["top_k"])
        outs = self.llm.chat([list(p) for p in prompts], self._SamplingParams(**kwargs), use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outs]

    def yes_no_margins(self, prompts: Sequence[Messages]) -> list[float]:
        if not prompts:
            return []
        candidates = self.yes_ids + self.no_ids
        requests = []
        for p in prompts:
            text = self.tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            requests += [self._TokensPrompt(prompt_token_ids=ids + [c]) for c in candidates]
        params = self._SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self.llm.generate(requests, params, use_tqdm=False)
        margins = []
        for i in range(len(prompts)):
            row = outs[i * len(candidates):(i + 1) * len(candidates)]
            logp = {c: o.prompt_logprobs[-1][c].logprob for c, o in zip(candidates, row)}
            margins.append(logsumexp([logp[c] for c in self.yes_ids]) - logsumexp([logp[c] for c in self.no_ids]))
        return margins

    def close(self) -> None:
        del self.llm
