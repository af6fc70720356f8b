"""Any OpenAI-compatible HTTP server (`vllm serve`, llama.cpp's server, TGI, a hosted API), with the
standard library only: one POST per prompt, `concurrency` in flight, retries with exponential
backoff on connection errors, timeouts, HTTP 429 and 5xx. Errors name the URL and what went wrong.

`api: chat` posts messages to {base_url}/chat/completions; `api: completions` posts to
{base_url}/completions with the messages flattened into a role-prefixed transcript (for servers that
serve a base model without a chat template).
"""
from __future__ import annotations

import http.client
import json
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stages.llm.backend import NO_WORDS, YES_WORDS, LLMBackend, LLMError, Messages, logsumexp

TOP_LOGPROBS = 20  # the most OpenAI's API returns per position


class _Retryable(Exception):
    pass


def transcript(messages: Messages) -> str:
    """A chat as plain text for /completions, ending where the assistant's reply starts."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(lines) + "\n\nAssistant:"


class OpenAIBackend(LLMBackend):
    def __init__(self, cfg: Mapping[str, Any]):
        o = cfg["openai"]
        self.base_url = str(o["base_url"]).rstrip("/")
        self.model = str(cfg["model"])
        self.model_id = f"openai/{self.model}"
        self.api = o.get("api", "chat")
        self.timeout_s = float(o["timeout_s"])
        self.max_retries = int(o["max_retries"])
        self.backoff_s = float(o.get("backoff_s", 1.0))
        self.concurrency = int(o["concurrency"])
        key_env = o.get("api_key_env")
        self.api_key = os.environ.get(key_env, "") if key_env else ""
        self.calls = 0  # HTTP requests sent, retries included
        self._lock = threading.Lock()

    # -- transport -------------------------------------------------------------------------------
    def _post_once(self, url: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        with self._lock:
            self.calls += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code} from {url}: {detail}") from exc
            raise LLMError(f"HTTP {exc.code} from {url}: {detail}") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (socket.timeout, TimeoutError)):
                raise _Retryable(f"no answer from {url} within {self.timeout_s} s") from exc
            raise _Retryable(f"cannot reach {url} ({exc.reason}); is the server running?") from exc
        except TimeoutError as exc:
            raise _Retryable(f"no answer from {url} within {self.timeout_s} s") from exc
        except (ConnectionError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection to {url} broke ({exc!r})") from exc
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise LLMError(f"{url} did not answer JSON: {raw[:200]!r}") from exc
        if not isinstance(reply, dict):
            raise LLMError(f"{url} answered JSON that is not an object: {raw[:200]!r}")
        return reply

    def _post(self, path: str, body: dict) -> dict:
        url = f"{self.base_url}/{path}"
        for attempt in range(self.max_retries + 1):
            try:
                return self._post_once(url, body)
            except _Retryable as exc:
                if attempt == self.max_retries:
                    raise LLMError(f"{exc} (gave up after {attempt + 1} attempt(s))") from exc
                time.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    def _map(self, fn: Callable[[Messages], Any], prompts: Sequence[Messages]) -> list:
        if len(prompts) <= 1 or self.concurrency == 1:
            return [fn(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(fn, prompts))

    def _body(self, messages: Messages, extra: Mapping[str, Any]) -> tuple[str, dict]:
        if self.api == "chat":
            return "chat/completions", {"model": self.model, "messages": list(messages), **extra}
        return "completions", {"model": self.model, "prompt": transcript(messages), **extra}

    @staticmethod
    def _choice(url_path: str, reply: dict) -> dict:
        try:
            return reply["choices"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise LLMError(f"{url_path}: reply has no choices[0]: {json.dumps(reply)[:200]}") from exc

    # -- interface -------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Messages], sampling: Mapping[str, Any]) -> list[str]:
        extra = {"temperature": sampling["temperature"], "max_tokens": sampling["max_tokens"]}
        for key in ("top_p", "top_k", "seed"):  # top_k is a vLLM extension: set it null for OpenAI
            if sampling.get(key) is not None:
                extra[key] = sampling[key]

        def one(messages: Messages) -> str:
            path, body = self._body(messages, extra)
            choice = self._choice(f"{self.base_url}/{path}", self._post(path, body))
            text = choice.get("message", {}).get("content") if self.api == "chat" else choice.get("text")
            if not isinstance(text, str):
                raise LLMError(f"{self.base_url}/{path}: reply has no text: {json.dumps(choice)[:200]}")
            return text.strip()

        return self._map(one, prompts)

    def yes_no_margins(self, prompts: Sequence[Messages]) -> list[float]:
        """From the top-20 log-probabilities of the first reply token. A word outside the top 20 is
        bounded by the smallest reported log-probability; NaN when neither word is among them."""
        extra = {"temperature": 0.0, "max_tokens": 1}
        extra.update({"logprobs": True, "top_logprobs": TOP_LOGPROBS} if self.api == "chat"
                     else {"logprobs": TOP_LOGPROBS})

        def one(messages: Messages) -> float:
            path, body = self._body(messages, extra)
            url = f"{self.base_url}/{path}"
            choice = self._choice(url, self._post(path, body))
            top = _top_logprobs(choice, self.api)
            if top is None:
                raise NotImplementedError(
                    f"{url} returned no logprobs, so it cannot rate yes/no; use judge.mode pairwise "
                    f"or a server that supports logprobs (e.g. vllm serve)")
            return _margin(top)

        return self._map(one, prompts)


def _top_logprobs(choice: dict, api: str) -> dict[str, float] | None:
    lp = choice.get("logprobs")
    if not lp:
        return None
    try:
        if api == "chat":
            return {t["token"]: float(t["logprob"]) for t in lp["content"][0]["top_logprobs"]}
        return {tok: float(v) for tok, v in lp["top_logprobs"][0].items()}
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _margin(top: Mapping[str, float]) -> float:
    yes = [v for t, v in top.items() if t in YES_WORDS]
    no = [v for t, v in top.items() if t in NO_WORDS]
    if not yes and not no:
        return math.nan
    floor = min(top.values())
    return logsumexp(yes or [floor]) - logsumexp(no or [floor])
