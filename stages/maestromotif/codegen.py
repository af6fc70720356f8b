"""Stage 6: an LLM writes the policy over skills, `def choose_skill(state) -> skill name`, for each task.

Loop per task, at most `rounds` rounds: prompt (skills and their descriptions, the state fields, the task
in words, the unit test) -> the answer's code (a ```python block, or the answer itself when it holds a
`def choose_skill`) -> the sandbox (stages/maestromotif/sandbox.py: checked, then run in a limited
process) -> the unit test in a simulated dungeon -> on failure the reason goes back to the model and it
is asked again. Every round is recorded (prompt, answer, code, status, reason). When no round passes,
the task uses REFERENCE_POLICY, a hand-written policy over skills, and says so (`source: reference`).
An answer without code, code that does not parse, a sandbox refusal, a hanging test, a server that is
down: each is a failed round with its reason, never a crash of the stage.

The simulated dungeon (SimDungeon): depth 1 of the main dungeon (dungeon_num 0), a branch to the Gnomish
Mines (dungeon_num 2) on a random depth in 2-4, 20-30 turns; each turn runs one skill to its end:
Descender goes one level down (into the Mines from the branch level once that level was explored),
Ascender one level up, Discoverer explores the level (finds gold), Merchant/Worshipper waste the turn
unless a shopkeeper/altar is in view (never, here).
"""
from __future__ import annotations

import json
import logging
import re
import time

import numpy as np
import pyarrow as pa

from stages.common.stage import StageContext
from stages.llm.backend import LLMError
from stages.llm.cache import AnswerCache, cached_generate
from stages.llm.factory import LazyBackend
from stages.maestromotif.sandbox import Limits, Sandbox
from stages.maestromotif.skills import SKILLS, STATE_FIELDS

log = logging.getLogger(__name__)

REFERENCE_POLICY = '''def choose_skill(state):
    if state["task"] == "mines":
        if state["dungeon_num"] == 2:
            return "discoverer"
        if state["depth"] > 4:
            return "ascender"
        if state["depth"] >= 2 and not state["level_explored"]:
            return "discoverer"
        return "descender"
    if state["task"] == "gold_descend" and state["gold"] < state["target_gold"]:
        if not state["level_explored"]:
            return "discoverer"
        return "descender"
    if state["depth"] < state["target_depth"]:
        return "descender"
    return "discoverer"
'''
ROUNDS_SCHEMA = pa.schema([("task", pa.string()), ("round", pa.int32()), ("prompt", pa.string()),
                           ("answer", pa.string()), ("code", pa.string()), ("status", pa.string()),
                           ("reason", pa.string()), ("seconds", pa.float64())])


class SimDungeon:
    def __init__(self, seed: int, task: dict):
        rng = np.random.default_rng(seed)
        self.rng, self.task = rng, task
        self.branch = int(rng.integers(2, 5))
        self.turns = int(rng.integers(20, 31))
        self.s = {"depth": 1, "dungeon_num": 0, "gold": 0, "hp": 14, "hp_max": 14, "xlvl": 1, "hunger": 1,
                  "turn": 0, "steps_in_skill": 0, "current_skill": "", "shopkeeper_in_view": False,
                  "altar_in_view": False, "has_items": True, "level_explored": False, "task": task["kind"],
                  "target_depth": task["target_depth"], "target_gold": task["target_gold"],
                  "skills": list(SKILLS)}

    def step(self, skill: str) -> None:
        s = self.s
        if skill == "descender":
            if s["dungeon_num"] == 0 and s["depth"] == self.branch and s["level_explored"]:
                s["dungeon_num"] = 2
            s["depth"] += 1
            s["level_explored"] = False
        elif skill == "ascender":
            if s["dungeon_num"] == 2 and s["depth"] == self.branch + 1:
                s["dungeon_num"] = 0
            s["depth"] = max(1, s["depth"] - 1)
            s["level_explored"] = False
        elif skill == "discoverer":
            if not s["level_explored"]:
                s["gold"] += int(self.rng.integers(1, 30))
            s["level_explored"] = True
        s["turn"] += 1
        s["current_skill"] = skill

    def solved(self) -> bool:
        return task_solved(self.task, self.s["depth"], self.s["dungeon_num"], self.s["gold"])


def task_solved(task: dict, depth: int, dungeon_num: int, gold: int) -> bool:
    if task["kind"] == "depth":
        return depth >= task["target_depth"]
    if task["kind"] == "mines":
        return dungeon_num == 2
    if task["kind"] == "gold_descend":
        return gold >= task["target_gold"] and depth >= task["target_depth"]
    raise ValueError(f"unknown task kind {task['kind']!r}")


def unit_test(box: Sandbox, task: dict, dungeons: int, seed: int) -> tuple[bool, str]:
    """Run the policy in `dungeons` simulated dungeons; (passed, reason of the first failure)."""
    for k in range(dungeons):
        sim = SimDungeon(seed + k, task)
        trace = []
        for _ in range(sim.turns):
            res = box.call("choose_skill", sim.s)
            if not res.ok:
                return False, f"choose_skill failed in dungeon {k}: {res.status}: {res.reason}"
            if res.value not in SKILLS:
                return False, f"choose_skill returned {res.value!r}, not one of {list(SKILLS)}"
            trace.append(res.value)
            sim.step(res.value)
            if sim.solved():
                break
        if not sim.solved():
            return False, (f"dungeon {k} (Mines branch at depth {sim.branch}, {sim.turns} turns): task not solved; "
                           f"ended at depth {sim.s['depth']}, dungeon_num {sim.s['dungeon_num']}, gold "
                           f"{sim.s['gold']}; skills chosen: {trace[:12]}{'...' if len(trace) > 12 else ''}")
    return True, f"solved {dungeons} simulated dungeons"


def prompt(skills: dict, task_name: str, task: dict, dungeons: int) -> list[dict]:
    skill_lines = "\n".join(f"- {name}: {words}" for name, words in skills.items())
    return [{"role": "system", "content": "You write short, correct Python code for a NetHack agent."},
            {"role": "user", "content": f"""The agent has these skills:
{skill_lines}

Task: {task['words']}

Write a Python function `choose_skill(state)` that returns the name of the skill to run next (one of
{list(skills)}). `state` is a dict with the keys {list(STATE_FIELDS)}; dungeon_num is 0 in the main dungeon and 2 in
the Gnomish Mines; depth grows as the agent goes down; level_explored is True once the discoverer has explored
the current level; the Gnomish Mines branch is found by exploring a level with depth 2, 3 or 4 and then descending.
Rules: no imports, no classes, no try/except, no attribute names starting with an underscore, no while True.
Unit test: {dungeons} simulated dungeons of 20-30 turns with the Mines branch at a random depth 2-4; each turn
calls choose_skill(state) and runs the skill; the test passes if the task is solved in every dungeon
(task '{task_name}', target_depth {task['target_depth']}, target_gold {task['target_gold']}).
Answer with the whole function in one ```python code block."""}]


_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


def extract_code(answer: str) -> str | None:
    blocks = [b for b in _BLOCK.findall(answer or "") if "def choose_skill" in b]
    if blocks:
        return blocks[-1]
    if answer and "def choose_skill" in answer:
        return answer[answer.index("def choose_skill"):]
    return None


def write_policy(task_name: str, task: dict, skills: dict, backend, cache: AnswerCache, llm: dict, cfg: dict,
                 limits: Limits) -> tuple[dict, list[dict]]:
    """The loop for one task; returns (the chosen policy, one row per round)."""
    messages = prompt(skills, task_name, task, cfg["test_dungeons"])
    rows = []
    sampling = {**llm["sampling"], "temperature": cfg["temperature"], "max_tokens": cfg["max_tokens"]}
    for rnd in range(1, cfg["rounds"] + 1):
        start = time.perf_counter()
        answer, code, status, reason = "", None, "", ""
        try:
            answer = cached_generate(backend, cache, [messages], sampling, 1)[0]
        except (LLMError, OSError) as exc:
            status, reason = "llm_error", f"the LLM did not answer: {exc}"
        if not status:
            code = extract_code(answer)
            if code is None:
                status, reason = "no_code", "the answer contains no `def choose_skill` code"
            else:
                with Sandbox(code, limits) as box:
                    loaded = box.load()
                    if not loaded.ok:
                        status, reason = f"sandbox_{loaded.status}", loaded.reason
                    else:
                        passed, reason = unit_test(box, task, cfg["test_dungeons"], cfg["test_seed"])
                        status = "passed" if passed else "failed_test"
        rows.append({"task": task_name, "round": rnd, "prompt": json.dumps(messages), "answer": answer,
                     "code": code, "status": status, "reason": reason, "seconds": time.perf_counter() - start})
        log.info("task %s round %d: %s %s", task_name, rnd, status, reason[:160])
        if status == "passed":
            return {"source": f"llm round {rnd}", "code": code, "rounds": rnd, "test": reason}, rows
        if status == "llm_error":
            continue
        messages = messages + [{"role": "assistant", "content": answer},
                               {"role": "user", "content": f"That did not work: {reason}\nFix it and answer "
                                                           "with the whole function in one ```python block."}]
    with Sandbox(REFERENCE_POLICY, limits) as box:   # the fallback must pass its own test
        assert box.load().ok
        passed, reason = unit_test(box, task, cfg["test_dungeons"], cfg["test_seed"])
    return {"source": "reference", "code": REFERENCE_POLICY, "rounds": len(rows),
            "test": reason, "reference_passes_test": passed}, rows


def run(ctx: StageContext, backend=None) -> None:
    cfg, llm = ctx.params["codegen"], ctx.params["llm"]
    limits = Limits(cpu_s=cfg["cpu_s"], wall_s=cfg["wall_s"], memory_mb=cfg["memory_mb"])
    backend = backend or LazyBackend(llm)
    policies, rows = {}, []
    with AnswerCache(ctx.params["annotate"]["cache_dir"], flush_every=1) as cache:
        for name, task in ctx.params["tasks"].items():
            policy, task_rows = write_policy(name, task, ctx.params["skills"], backend, cache, llm, cfg, limits)
            policies[name] = policy
            rows += task_rows
    n_llm = sum(p["source"] != "reference" for p in policies.values())
    ctx.write_table("rounds", pa.Table.from_pylist(rows, ROUNDS_SCHEMA), ROUNDS_SCHEMA)
    ctx.write_json("policies", {"model_id": backend.model_id, "tasks": policies,
                                "llm_pass_rate": n_llm / len(policies),
                                "rounds_passed": sum(r["status"] == "passed" for r in rows), "rounds": len(rows)})
    log.info("policies over skills: %s", {k: v["source"] for k, v in policies.items()})
