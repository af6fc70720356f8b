"""A stage that does nothing: `bench/stage_startup.py` times it to measure the runner's fixed cost."""
from __future__ import annotations


def run(ctx) -> None:
    ctx.write_json("metrics", {"noop": 1})
