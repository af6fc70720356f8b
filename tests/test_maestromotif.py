"""MaestroMotif: the sandbox (hostile suite, both layers), skills' conditions, captions, per-skill annotation
and reward models, the policy-over-skills loop against a scripted OpenAI-compatible server, and the tiny
chain."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stages.common.code import ROOT
from stages.common.params import load_params
from stages.maestromotif.hostile import HOSTILE, run_suite
from stages.maestromotif.sandbox import Limits, Refused, Sandbox, check, run_source

FAST = Limits(cpu_s=1, wall_s=1.0, memory_mb=256, max_steps=100_000)


def tiny_params() -> dict:
    return load_params(ROOT / "params.yaml", ROOT / "config" / "tiny.yaml")["maestromotif"]


# ---- sandbox -------------------------------------------------------------------------------------------

def test_hostile_suite_is_refused_or_killed_with_no_escape():
    assert len(HOSTILE) >= 25
    rows = run_suite(FAST)
    escaped = [r["name"] for r in rows if r["escaped"]]
    assert escaped == []
    assert all(r["status"] in ("refused", "error", "killed") and r["reason"] for r in rows)
    by_name = {r["name"]: r for r in rows}
    # each family is stopped by the layer meant for it
    assert by_name["import"]["status"] == "refused"
    assert by_name["format_attr"]["status"] == "refused"
    assert "step limit" in by_name["huge_for"]["reason"]
    assert "Recursion" in by_name["recursion"]["reason"]
    assert by_name["memory_list"]["status"] == "killed"
    assert by_name["bigint_bomb"]["status"] == "killed"


def test_checker_accepts_ordinary_policy_code_and_names_the_violation():
    good = ("def choose_skill(state):\n"
            "    seen = [s for s in state['skills'] if s != 'merchant']\n"
            "    if state.depth < state.get('target_depth', 3) and state.steps_in_skill < 500:\n"
            "        return 'descender'\n"
            "    return seen[0] if seen else 'discoverer'\n")
    check(good)
    with pytest.raises(Refused, match="attribute '__class__'"):
        check("x = ().__class__")
    with pytest.raises(Refused, match="neither a safe builtin"):
        check("result = os")


def test_sandbox_calls_a_policy_and_survives_a_killed_call():
    src = ("def choose_skill(state):\n"
           "    if state['depth'] == 99:\n"
           "        for i in range(10 ** 12):\n"
           "            pass\n"
           "    return 'descender' if state.depth < 3 else 'discoverer'\n")
    with Sandbox(src, FAST) as box:
        assert box.load().ok
        assert box.call("choose_skill", {"depth": 1}).value == "descender"
        hung = box.call("choose_skill", {"depth": 99})
        assert hung.status == "error" and "step limit" in hung.reason
        assert box.call("choose_skill", {"depth": 5}).value == "discoverer"   # worker still answers
        assert box.call("missing", {}).status == "error"


def test_cpu_limit_kills_a_builtin_loop_the_step_counter_cannot_see():
    result = run_source("result = sum(range(10 ** 13))", Limits(cpu_s=1, wall_s=30.0))
    assert result.status == "killed" and "CPU time limit" in result.reason


def test_process_layer_alone_blocks_files_sockets_and_environment(tmp_path, monkeypatch):
    """The checker is bypassed (tests only): even with a dunder walk to `os`, the worker cannot create a
    file, open a socket, or read the parent's environment."""
    marker = tmp_path / "escaped"
    monkeypatch.setenv("MAESTROMOTIF_TEST_SECRET", "hunter2")
    walk = (
        "mods = None\n"
        "for c in ().__class__.__base__.__subclasses__():\n"
        "    try:\n"
        "        g = c.__init__.__globals__\n"
        "    except:\n"
        "        continue\n"
        "    if 'sys' in g:\n"
        "        mods = g['sys'].modules\n"
        "        break\n"
        "os = mods['os']\n"
        "imp, BE = mods['builtins'].__import__, mods['builtins'].BaseException\n"
        "out = {}\n"
        "try:\n"
        f"    fd = os.open({str(marker)!r}, os.O_WRONLY | os.O_CREAT)\n"
        "    os.write(fd, b'x')\n"
        "    out['file'] = 'written'\n"
        "except BE as e:\n"
        "    out['file'] = str(e)\n"
        "try:\n"
        "    s = imp('socket').socket()\n"
        "    s.connect(('127.0.0.1', 9))\n"
        "    out['socket'] = 'connected'\n"
        "except BE as e:\n"
        "    out['socket'] = str(e)\n"
        "out['env'] = dict(os.environ)\n"
        "result = out\n")
    with Sandbox("", FAST) as box:
        result = box.unchecked(walk)
    assert result.ok, result.reason   # the walk itself works without the checker ...
    out = result.value
    assert not marker.exists() and out["file"] != "written"       # ... but no new fd can be opened
    assert out["socket"] != "connected"
    assert "hunter2" not in json.dumps(out["env"])


def test_sandbox_command_exits_nonzero_on_refusal(tmp_path):
    bad, good = tmp_path / "bad.py", tmp_path / "good.py"
    bad.write_text("import os\n")
    good.write_text("result = sorted([3, 1, 2])\n")
    run = lambda f: subprocess.run([sys.executable, "-m", "stages", "sandbox", str(f)], cwd=ROOT,  # noqa: E731
                                   capture_output=True, text=True, timeout=60)
    refused, ok = run(bad), run(good)
    assert refused.returncode == 1 and "Import is not allowed" in refused.stderr
    assert ok.returncode == 0 and json.loads(ok.stdout)["value"] == [1, 2, 3]


# ---- skills, captions -------------------------------------------------------------------------------------

from stages.maestromotif.skills import can_start, caption, clipped_diffs, should_end  # noqa: E402

BASE = {"depth": 1, "dungeon_num": 0, "gold": 0, "hp": 14, "hp_max": 14, "xlvl": 1, "hunger": 1,
        "shopkeeper_in_view": False, "altar_in_view": False, "has_items": True}


def test_initiation_and_termination_conditions():
    shop = {**BASE, "shopkeeper_in_view": True}
    assert can_start("descender", BASE) and not can_start("merchant", BASE) and can_start("merchant", shop)
    assert not can_start("worshipper", {**BASE, "altar_in_view": True, "has_items": False})
    down = {**BASE, "depth": 2}
    assert should_end("descender", BASE, down, 3, 500) and not should_end("descender", BASE, BASE, 999, 500)
    assert should_end("ascender", down, BASE, 1, 500)
    assert not should_end("discoverer", BASE, BASE, 499, 500) and should_end("discoverer", BASE, BASE, 500, 500)
    assert not should_end("merchant", shop, shop, 9999, 500) and should_end("merchant", shop, shop, 10000, 500)
    assert should_end("discoverer", BASE, shop, 1, 500)           # another skill's initiation fires
    with pytest.raises(ValueError, match="unknown skill"):
        can_start("thief", BASE)


def test_caption_has_the_papers_shape():
    after = {**BASE, "depth": 2, "gold": 5, "hp": 12, "hunger": 2}
    text = caption("You see here a dagger.", "", BASE, after)
    lines = text.split("\n")
    assert lines[0] == 'Previous message: "You see here a dagger."' and lines[1] == 'Current message: ""'
    assert lines[2] == "Dungeon level went down from 1 to 2."
    assert lines[3] == "Gold went up from 0 to 5." and lines[4] == "HP went down from 14/14 to 12/14."
    assert lines[5] == "XP level did not change (1)." and lines[6] == "Hunger changed from Not hungry to Hungry."
    assert "went up from 2 to 1" in caption("", "", after, BASE)
    assert clipped_diffs(BASE, {**after, "gold": 40}, ("depth",)).tolist() == [1, 0, 0, 0, 0]
    assert clipped_diffs(BASE, {**after, "gold": 40}, ("depth", "gold")).tolist() == [1, 1, 0, 0, 0]


# ---- annotation and reward models -------------------------------------------------------------------------

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from stages.llm.backend import LLMBackend  # noqa: E402
from stages.maestromotif.annotate import annotate  # noqa: E402
from stages.maestromotif.captions import CAPTIONS_SCHEMA, PAIRS_SCHEMA  # noqa: E402


class RuleJudge(LLMBackend):
    """Rates a caption yes when it matches the skill named in the question (a perfect annotator)."""

    model_id = "test/rule-judge"

    def __init__(self):
        self.asked = []

    def generate(self, prompts, sampling):
        raise AssertionError("pointwise only")

    def yes_no_margins(self, prompts):
        out = []
        for p in prompts:
            q = p[-1]["content"]
            self.asked.append(q)
            down, up = "level went down" in q, "level went up" in q
            gold = "Gold went up" in q or "You kill" in q or "gold pieces" in q
            if q.startswith("DOWN"):
                out.append(2.0 if down else -2.0 if up else 0.0)
            elif q.startswith("UP"):
                out.append(2.0 if up else -2.0 if down else 0.0)
            else:
                out.append(-2.0 if (down or up) else 1.0 if gold else 0.0)
        return out


def synthetic_captions(n_pairs=400, seed=0):
    rng = np.random.default_rng(seed)
    msgs = ["", "You see here a dagger.", "It's a wall.", "You kill the newt!", "$ - 4 gold pieces.",
            "The door opens.", "You hear some noises.", "You feel hungry."]
    rows = []
    for m in msgs:
        for dd in (-1, 0, 1):
            for dg in (0, 1):
                after = {**BASE, "depth": 1 + dd + 1, "gold": dg}
                before = {**BASE, "depth": 2}
                rows.append((caption("", m, before, after), m, dd, dg))
    captions = pa.table({"caption_id": np.arange(len(rows), dtype=np.int64), "caption": [r[0] for r in rows],
                         "message": [r[1] for r in rows], "count": np.full(len(rows), 5, np.int64),
                         "pooled": np.ones(len(rows), bool), "event": np.ones(len(rows), bool),
                         "d_depth": np.array([r[2] for r in rows], np.int32),
                         "d_gold": np.array([r[3] for r in rows], np.int32),
                         **{f"d_{s}": np.zeros(len(rows), np.int32) for s in ("hp", "xlvl", "hunger")}},
                        CAPTIONS_SCHEMA)
    pick = rng.integers(len(rows), size=(n_pairs, 2))
    pairs = pa.table({"pair_id": np.arange(n_pairs, dtype=np.int64), "a": pick[:, 0], "b": pick[:, 1],
                      "tie": pick[:, 0] == pick[:, 1]}, PAIRS_SCHEMA)
    return captions, pairs


JUDGE = {"goal": "unused", "mode": "pointwise", "tie_margin": 0.5, "pointwise_examples": [],
         "pointwise_question": "{goal}\nEvent:\n{message}"}
LLM = {"backend": "local", "model": "x", "sampling": {"temperature": 0.0, "max_tokens": 8}, "batch_size": 8}
GOALS = {"descender": "DOWN", "ascender": "UP", "discoverer": "STAY"}


def test_annotation_per_skill_shares_one_cache_and_never_rates_twice(tmp_path):
    captions, pairs = synthetic_captions(120)
    judge = RuleJudge()
    opts = {"cache_dir": str(tmp_path / "cache"), "flush_every": 8}
    table, metrics = annotate(captions, pairs, GOALS, LLM, JUDGE, opts, backend=judge)
    pooled = len(set(pairs.column("a").to_pylist()) | set(pairs.column("b").to_pylist()))
    assert table.num_rows == 3 * pairs.num_rows
    assert len(judge.asked) <= 3 * pooled and len(judge.asked) == len(set(judge.asked))
    ties = table.filter(pa.compute.equal(table.column("judge_mode"), "identical"))
    assert ties.num_rows == 3 * int(np.sum(pairs.column("tie").to_numpy()))
    assert set(ties.column("label").to_pylist()) <= {0}
    again = RuleJudge()
    table2, metrics2 = annotate(captions, pairs, GOALS, LLM, JUDGE, opts, backend=again)
    assert again.asked == [] and metrics2["model_calls"] == 0 and table2.equals(table)


def test_reward_models_rank_probes_as_their_skill_says(tmp_path):
    from stages.common.stage import StageContext
    from stages.maestromotif import reward
    from stages.maestromotif.reward import SkillRewards

    captions, pairs = synthetic_captions(600)
    table, _ = annotate(captions, pairs, GOALS, LLM, JUDGE, {"cache_dir": str(tmp_path / "c"), "flush_every": 64},
                        backend=RuleJudge())
    for name, t in (("captions", captions), ("pairs", pairs), ("annotations", table)):
        pa.parquet.write_table(t, tmp_path / f"{name}.parquet")
    outs = {k: tmp_path / f"out_{k}" for k in ("model", "stats", "metrics")}
    outs["model"] = tmp_path / "models.safetensors"
    cfg = tiny_params()["reward"]
    train = {**cfg["train"], "epochs": 15, "batch_size": 64, "diff_stats": ["depth", "gold"]}
    ctx = StageContext("maestromotif.reward", {"model": cfg["model"], "train": train},
                       {"model": "maestromotif.reward.model", "train": "maestromotif.reward.train"},
                       {n: tmp_path / f"{n}.parquet" for n in ("captions", "pairs", "annotations")}, outs)
    reward.run(ctx)
    metrics = json.loads(outs["metrics"].read_text())["goals"]
    for goal in GOALS:
        m = metrics[goal]
        need = 1.0 if goal != "discoverer" else 0.6   # kills/gold are learned from a few messages only
        wrong = [p for p in m["probes"] if not p["ok"]]
        assert m["probes_n"] > 0 and m["probes_ok"] >= need * m["probes_n"], (goal, wrong)
    # held-out pairs use captions never seen in training (few here: noisy per goal); chance is 0.5
    assert np.mean([metrics[g]["heldout_agreement"] for g in GOALS]) > 0.6
    rewards = SkillRewards.load(outs["model"], outs["stats"])
    down = rewards.normalized("descender", ["", ""], np.array([[1, 0, 0, 0, 0], [-1, 0, 0, 0, 0]], np.float32))
    assert down[0] > down[1]
    stats = json.loads(outs["stats"].read_text())["goals"]
    assert stats["descender"]["threshold_quantile"] == train["thresholds"]["first"]
    assert stats["ascender"]["threshold_quantile"] == train["thresholds"]["others"]


# ---- the policy over skills: codegen loop against a scripted OpenAI-compatible server -------------------

import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

from stages.llm.cache import AnswerCache  # noqa: E402
from stages.llm.openai_server import OpenAIBackend  # noqa: E402
from stages.maestromotif.codegen import REFERENCE_POLICY, SimDungeon, extract_code, unit_test, write_policy  # noqa: E402

HOSTILE_ANSWER = ("Here you go:\n```python\nimport os\ndef choose_skill(state):\n    os.system('id')\n"
                  "    return 'descender'\n```")
FAILING_ANSWER = "```python\ndef choose_skill(state):\n    return 'discoverer'\n```"
CORRECT_ANSWER = f"```python\n{REFERENCE_POLICY}```"
TASKS = {"depth": {"kind": "depth", "words": "Reach level 3.", "target_depth": 3, "target_gold": 0},
         "mines": {"kind": "mines", "words": "Enter the Gnomish Mines.", "target_depth": 3, "target_gold": 0}}
CODEGEN = {"rounds": 3, "temperature": 0.2, "max_tokens": 64, "test_dungeons": 5, "test_seed": 0, "cpu_s": 1,
           "wall_s": 2.0, "memory_mb": 256}


def scripted_server(answers):
    """A local OpenAI-compatible chat endpoint (test double) answering `answers` in order."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body["messages"])
            text = answers[min(len(seen), len(answers)) - 1]
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def openai_cfg(port: int) -> dict:
    return {"backend": "openai", "model": "scripted", "batch_size": 1,
            "openai": {"base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": None, "timeout_s": 5.0,
                       "max_retries": 0, "backoff_s": 0.01, "concurrency": 1, "api": "chat"},
            "sampling": {"temperature": 0.2, "top_p": 0.95, "top_k": 50, "max_tokens": 64, "seed": 0}}


def test_codegen_refuses_then_refines_then_accepts(tmp_path):
    server, seen = scripted_server([HOSTILE_ANSWER, FAILING_ANSWER, CORRECT_ANSWER])
    try:
        cfg = openai_cfg(server.server_address[1])
        with AnswerCache(tmp_path / "cache", flush_every=1) as cache:
            policy, rows = write_policy("mines", TASKS["mines"], tiny_params()["skills"], OpenAIBackend(cfg), cache,
                                        cfg, CODEGEN, FAST)
    finally:
        server.shutdown()
    assert [r["status"] for r in rows] == ["sandbox_refused", "failed_test", "passed"]
    assert "Import is not allowed" in rows[0]["reason"] and "task not solved" in rows[1]["reason"]
    assert policy["source"] == "llm round 3" and "def choose_skill" in policy["code"]
    # each refinement shows the model its previous answer and why it failed
    assert len(seen) == 3 and "Import is not allowed" in seen[1][-1]["content"]
    assert "task not solved" in seen[2][-1]["content"] and seen[2][-2]["content"] == FAILING_ANSWER


def test_codegen_falls_back_to_the_reference_when_the_server_is_down_or_answers_junk(tmp_path):
    cfg = openai_cfg(9)   # nothing listens on the discard port
    with AnswerCache(tmp_path / "cache") as cache:
        policy, rows = write_policy("depth", TASKS["depth"], tiny_params()["skills"], OpenAIBackend(cfg), cache, cfg,
                                    {**CODEGEN, "rounds": 2}, FAST)
    assert [r["status"] for r in rows] == ["llm_error", "llm_error"] and "did not answer" in rows[0]["reason"]
    assert policy["source"] == "reference" and policy["reference_passes_test"]
    server, _ = scripted_server(["I think you should go down.", "```python\ndef choose_skill(state:\n```",
                                 "```python\ndef choose_skill(state):\n    for i in range(10 ** 9):\n"
                                 "        pass\n```"])
    try:
        cfg = openai_cfg(server.server_address[1])
        with AnswerCache(tmp_path / "cache2") as cache:
            policy, rows = write_policy("depth", TASKS["depth"], tiny_params()["skills"], OpenAIBackend(cfg), cache,
                                        cfg, CODEGEN, FAST)
    finally:
        server.shutdown()
    assert [r["status"] for r in rows] == ["no_code", "sandbox_refused", "failed_test"]
    assert "step limit" in rows[2]["reason"] and policy["source"] == "reference"


def test_reference_policy_solves_the_simulated_dungeons_and_a_naive_one_does_not():
    with Sandbox(REFERENCE_POLICY, FAST) as box:
        box.load()
        for task in (*TASKS.values(), {"kind": "gold_descend", "words": "", "target_depth": 2, "target_gold": 5}):
            assert unit_test(box, task, 10, 1)[0], task
    with Sandbox(FAILING_ANSWER.split("\n", 1)[1].rsplit("```", 1)[0], FAST) as box:
        box.load()
        assert not unit_test(box, TASKS["depth"], 3, 0)[0]
    assert extract_code("no code here") is None
    assert {SimDungeon(s, TASKS["mines"]).branch for s in range(30)} == {2, 3, 4}


# ---- the skill-conditioned PPO runtime on real NLE (a couple of updates) -------------------------------

def test_skill_runtime_trains_one_policy_and_resumes(tmp_path):
    import torch

    from stages.common.resume import ResumeState
    from stages.maestromotif.agent import SkillAgent, SkillRuntime
    from stages.maestromotif.reward import SkillRewardNet, SkillRewards
    from stages.rl.ppo_nethack import PPOConfig, Stopped
    from stages.rl.ppo_nethack import train as ppo_train

    params = tiny_params()
    model = params["reward"]["model"]
    nets = {g: SkillRewardNet.from_params(model) for g in ("discoverer", "descender", "ascender")}
    stats = {"model": model, "diff_stats": ["depth"],
             "goals": {g: {"mean": 0.0, "std": 1.0, "quantiles": {"0.85": -9.0, "0.95": -9.0},
                           "threshold_quantile": 0.85} for g in nets}}
    cfg = PPOConfig.from_dict({**params["ppo"], "total_steps": 384, "num_envs": 2, "num_steps": 64,
                               "checkpoint_every": 1})

    def go(stop_after=None, resume=None):
        torch.manual_seed(0)
        rt = SkillRuntime(SkillRewards(nets, stats), 2, params["policy"]["crop"], ["discoverer", "descender"],
                          20, 3.0, 0.1, seed=0)
        out = ppo_train(cfg, lambda: SkillAgent.from_params(params["policy"]), rt.observe, rt, 0, 100, resume,
                        resume_key="k", stop_after=stop_after)
        return rt, out

    rt, (agent, curve, _) = go()
    assert len(curve) == 3 and all(np.isfinite(c["policy_loss"]) for c in curve)
    assert rt.log["switches.discoverer"] + rt.log["switches.descender"] > 2   # budget 20: skills do switch
    assert curve[0]["intrinsic_per_step"] != 0   # the active skill's reward model pays
    resume = ResumeState(tmp_path / "policy.resume.safetensors", {"k": 1})
    with pytest.raises(Stopped):
        go(stop_after=1, resume=resume)
    _, (agent2, curve2, _) = go(resume=resume)
    # same run up to float rounding (reward-model batches differ in shape after the resume)
    assert [c["policy_loss"] for c in curve2] == pytest.approx([c["policy_loss"] for c in curve], abs=1e-6)
