"""The five skills, their initiation and termination conditions, the game state the policy over skills
reads, and the paper's captions. Plain Python on plain dicts, so the same code serves the real NLE loop,
the simulated dungeon of the code-writing stage and the tests.

Conditions (method note): Merchant starts when a shopkeeper is in view and the agent holds an item,
Worshipper when an altar is in view and the agent holds an item; Discoverer, Descender and Ascender may
always start. Descender/Ascender end on a depth change, Discoverer after `budget` steps, Merchant and
Worshipper after 20 x budget; any skill ends when another skill's initiation fires (a shopkeeper or
altar comes into view).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from nle import nethack

SKILLS = ("discoverer", "descender", "ascender", "merchant", "worshipper")
SKILL_ID = {name: i for i, name in enumerate(SKILLS)}
ALWAYS = ("discoverer", "descender", "ascender")
# NetHack's u.uhs values (NLE blstats hunger)
HUNGER = {0: "Satiated", 1: "Not hungry", 2: "Hungry", 3: "Weak", 4: "Fainting", 5: "Fainted",
          6: "Starved"}
# what the policy over skills may read (the sandbox's attribute allow-list includes these names)
STATE_FIELDS = ("depth", "dungeon_num", "gold", "hp", "hp_max", "xlvl", "hunger", "turn", "steps_in_skill",
                "current_skill", "shopkeeper_in_view", "altar_in_view", "has_items", "level_explored",
                "task", "target_depth", "target_gold", "skills")
_SHOP = re.compile(r"welcome to .*'s|shopkeeper", re.I)
_ALTAR = ord("_")
_BL = nethack


def game_state(blstats: np.ndarray, chars: np.ndarray | None = None, message: str = "") -> dict:
    """The policy-visible state from one NLE observation. `has_items`: NLE's score task gives no inventory
    here; every starting character carries items, so it is True (documented simplification)."""
    bl = blstats
    return {"depth": int(bl[_BL.NLE_BL_DEPTH]), "dungeon_num": int(bl[_BL.NLE_BL_DNUM]),
            "gold": int(bl[_BL.NLE_BL_GOLD]), "hp": int(bl[_BL.NLE_BL_HP]),
            "hp_max": int(bl[_BL.NLE_BL_HPMAX]), "xlvl": int(bl[_BL.NLE_BL_XP]),
            "hunger": int(bl[_BL.NLE_BL_HUNGER]), "turn": int(bl[_BL.NLE_BL_TIME]),
            "shopkeeper_in_view": bool(_SHOP.search(message or "")),
            "altar_in_view": bool(chars is not None and (chars[1:22] == _ALTAR).any()),
            "has_items": True}


def can_start(skill: str, state: Mapping) -> bool:
    if skill == "merchant":
        return bool(state["shopkeeper_in_view"] and state["has_items"])
    if skill == "worshipper":
        return bool(state["altar_in_view"] and state["has_items"])
    if skill in ALWAYS:
        return True
    raise ValueError(f"unknown skill {skill!r} (known: {SKILLS})")


def should_end(skill: str, start: Mapping, state: Mapping, steps: int, budget: int) -> bool:
    """Whether `skill`, started in `start`, ends in `state` after `steps` of its own steps."""
    for other in ("merchant", "worshipper"):
        if other != skill and can_start(other, state):
            return True
    if skill in ("descender", "ascender"):
        return state["depth"] != start["depth"] or state["dungeon_num"] != start["dungeon_num"]
    if skill == "discoverer":
        return steps >= budget
    if skill in ("merchant", "worshipper"):
        return steps >= 20 * budget
    raise ValueError(f"unknown skill {skill!r} (known: {SKILLS})")


# ---- captions (paper's shape) ---------------------------------------------------------------------------

DIFF_STATS = ("depth", "gold", "hp", "xlvl", "hunger")


def _change(name: str, before: int, after: int, down_word: str = "down", up_word: str = "up") -> str:
    if after == before:
        return f"{name} did not change ({after})."
    word = up_word if after > before else down_word
    return f"{name} went {word} from {before} to {after}."


def caption(prev_message: str, message: str, before: Mapping, after: Mapping) -> str:
    """One caption: previous and current message, then the depth, gold, HP (with max), XP level and
    hunger changes. Depth grows downwards in NetHack, so "went down" means depth increased."""
    lines = [f'Previous message: "{prev_message}"', f'Current message: "{message}"',
             _change("Dungeon level", before["depth"], after["depth"], down_word="up", up_word="down"),
             _change("Gold", before["gold"], after["gold"])]
    hp = (f"HP did not change ({after['hp']}/{after['hp_max']})." if after["hp"] == before["hp"] else
          f"HP went {'up' if after['hp'] > before['hp'] else 'down'} from {before['hp']}/{before['hp_max']} "
          f"to {after['hp']}/{after['hp_max']}.")
    lines += [hp, _change("XP level", before["xlvl"], after["xlvl"])]
    h0, h1 = HUNGER.get(before["hunger"], "?"), HUNGER.get(after["hunger"], "?")
    lines.append(f"Hunger: {h1}." if h0 == h1 else f"Hunger changed from {h0} to {h1}.")
    return "\n".join(lines)


def clipped_diffs(before: Mapping, after: Mapping, keep: tuple[str, ...]) -> np.ndarray:
    """Stat differences after - before clipped to [-1, 1]; stats not in `keep` are zeroed (the reference
    keeps only depth)."""
    return np.array([float(np.clip(after[s] - before[s], -1, 1)) if s in keep else 0.0 for s in DIFF_STATS],
                    np.float32)
