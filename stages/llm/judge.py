"""The Motif judge: which of two game messages shows more progress towards a goal.

pairwise   (the paper's protocol, for capable models) one prompt shows both messages; the model
           reasons, then ends with a verdict ("best_description": 1 | 2 | None). An answer without a
           readable verdict gets one follow-up asking only for the verdict (as in the paper's code);
           still unreadable -> unknown (-1), masked out of reward training.
pointwise  (for the embedded 135M model, which picks the first slot whatever the order) each unique
           message is rated once: log p(yes) - log p(no) to a yes/no question built from the goal,
           after a few answered examples. A pair's label compares the two ratings: 1 or 2, or a tie
           (0) when they differ by less than `tie_margin`; a non-finite rating -> unknown.
Labels: 1 = first message better, 2 = second, 0 = tie, -1 = unknown.

What to prefer (the goal) and how to ask (mode, the pointwise question and examples, tie_margin) are the
method's judge config (Motif: `motif.judge`), not part of the `llm:` block, which only says which model
answers and how it samples.
"""
from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stages.llm.backend import LLMBackend, LLMError, Messages
from stages.llm.cache import AnswerCache, CallStats, cached_generate, cached_margins

FIRST, SECOND, TIE, UNKNOWN = 1, 2, 0, -1

# From the paper's code (facebookresearch/motif, rlaif/prompts.py, "default" prompt version).
SYSTEM_PROMPT = ("You are a helpful and honest judge of good gameplaying and progress in the NetHack game. "
                 "Always answer as helpfully as possible, while being truthful.\n\n"
                 "If you don't know the answer to a question, please don't share false information.")
PAIRWISE_TEMPLATE = """I will present you with two short gameplay descriptions.
First, tell me about your knowledge of NetHack. Mention the goal of NetHack. {goal}
Then, write an analysis describing the semantics of each description strictly using information from the descriptions (which may be empty) and your knowledge of NetHack.
Provide a comparative analysis based on first principles.
Finally, respond by explicitly declaring which one is the most likely to make some progress towards the goal, writing on the last line either ("best_description": 1), ("best_description": 2). You could also say ("best_description": None).

{{
"description_1":
"{message_a}"
}}

{{
"description_2":
"{message_b}"
}}"""
RETRY_PROMPT = ('So, which one is the best? Please respond by saying ("best_description": 1), '
                '("best_description": 2), or ("best_description": None).')

_CHOICE = r"(1|2|one|two|none|null|neither|tie|equal)\b"
_KEYED = re.compile(  # ("best_description": 1), Verdict: 2, {"choice": 1}, answer = none, ...
    r"(?:best[\s_]*(?:description|message)|verdict|choice|answer|preferred|preference|winner)"
    r"[\s\"'*:=()\[\]{}-]{0,8}(?:is\s+)?(?:(?:description|message|option)[\s_#]*)?" + _CHOICE, re.I)
_PHRASE = re.compile(  # I prefer message 1; message 2 is better; choose neither
    r"(?:\b(?:prefer|choose|pick|select)\w*\s+(?:the\s+)?(?:(?:description|message|option)[\s_#]*)?" + _CHOICE
    + r")|(?:\b(?:description|message|option)[\s_#]*(1|2)\s+is\s+(?:the\s+|clearly\s+)?"
      r"(?:better|best|more likely|preferable|preferred))", re.I)
_BARE = re.compile(r"[\W_]*" + _CHOICE + r"[\W_]*", re.I)
_VALUE = {"1": FIRST, "one": FIRST, "2": SECOND, "two": SECOND}


def judge_mode(mode: str, backend: str) -> str:
    """`pairwise` or `pointwise`; `auto` is pointwise for the local backend (a 135M model picks the
    first slot whatever the order) and pairwise for the capable ones."""
    if mode == "auto":
        return "pointwise" if backend == "local" else "pairwise"
    return mode


def _value(word: str) -> int:
    return _VALUE.get(word.lower(), TIE)


def parse_verdict(text: str) -> int | None:
    """1, 2, 0 (none / tie) or None when no verdict can be read. The last explicit verdict wins
    (a model may quote the instructions before answering)."""
    if not text:
        return None
    keyed = list(_KEYED.finditer(text))
    if keyed:
        return _value(keyed[-1].group(1))
    phrased = list(_PHRASE.finditer(text))
    if phrased:
        last = phrased[-1]
        return _value(last.group(1) or last.group(2))
    bare = _BARE.fullmatch(text.strip())
    return _value(bare.group(1)) if bare else None


def pairwise_prompt(goal: str, message_a: str, message_b: str) -> Messages:
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": PAIRWISE_TEMPLATE.format(goal=goal, message_a=message_a,
                                                                 message_b=message_b)}]


def pointwise_prompt(judge: Mapping[str, Any], goal: str, message: str) -> Messages:
    """System prompt, the answered examples as earlier turns, then the question about `message`."""
    template = judge["pointwise_question"]
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    if not fields <= {"goal", "message"} or "message" not in fields:
        raise LLMError(f"judge.pointwise_question must use {{message}} (and may use {{goal}}), "
                       f"found fields {sorted(fields)}")
    turns: Messages = [{"role": "system", "content": SYSTEM_PROMPT.split("\n")[0]}]
    for ex in judge.get("pointwise_examples", []):
        turns += [{"role": "user", "content": template.format(goal=goal, message=ex["message"])},
                  {"role": "assistant", "content": ex["answer"]}]
    return turns + [{"role": "user", "content": template.format(goal=goal, message=message)}]


@dataclass
class PairJudgement:
    label: int
    answer: str | None = None        # pairwise: the first raw answer
    reask_answer: str | None = None  # pairwise: the answer to the follow-up, if one was needed
    n_reasks: int = 0
    rating_a: float | None = None    # pointwise ratings
    rating_b: float | None = None


def judge_pairwise(backend: LLMBackend, cache: AnswerCache, goal: str, pairs: Sequence[tuple[str, str]],
                   sampling: Mapping[str, Any], batch_size: int, stats: CallStats | None = None,
                   progress=None) -> list[PairJudgement]:
    prompts = [pairwise_prompt(goal, a, b) for a, b in pairs]
    answers = cached_generate(backend, cache, prompts, sampling, batch_size, stats, progress)
    verdicts = [parse_verdict(a) for a in answers]
    failed = [i for i, v in enumerate(verdicts) if v is None]
    retry = [prompts[i] + [{"role": "assistant", "content": answers[i]}, {"role": "user", "content": RETRY_PROMPT}]
             for i in failed]
    second = dict(zip(failed, cached_generate(backend, cache, retry, sampling, batch_size, stats)))
    out = []
    for i, (answer, verdict) in enumerate(zip(answers, verdicts)):
        if verdict is not None:
            out.append(PairJudgement(verdict, answer=answer))
        else:
            again = parse_verdict(second[i])
            out.append(PairJudgement(UNKNOWN if again is None else again, answer=answer,
                                     reask_answer=second[i], n_reasks=1))
    return out


def label_from_ratings(rating_a: float, rating_b: float, tie_margin: float) -> int:
    if not (math.isfinite(rating_a) and math.isfinite(rating_b)):
        return UNKNOWN
    if abs(rating_a - rating_b) < tie_margin:
        return TIE
    return FIRST if rating_a > rating_b else SECOND


def judge_pointwise(backend: LLMBackend, cache: AnswerCache, goal: str, pairs: Sequence[tuple[str, str]],
                    judge: Mapping[str, Any], batch_size: int, stats: CallStats | None = None,
                    progress=None) -> tuple[list[PairJudgement], dict[str, float]]:
    """Judgements per pair and the rating of every unique message (rated once each)."""
    captions = sorted({m for pair in pairs for m in pair})
    prompts = [pointwise_prompt(judge, goal, c) for c in captions]
    ratings = dict(zip(captions, cached_margins(backend, cache, prompts, batch_size, stats, progress)))
    margin = float(judge["tie_margin"])
    return [PairJudgement(label_from_ratings(ratings[a], ratings[b], margin), rating_a=ratings[a],
                          rating_b=ratings[b]) for a, b in pairs], ratings
