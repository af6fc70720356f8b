"""Which source files a stage runs: its module and every `stages.*` module it imports, transitively.

Both engines see these files as the stage's code dependencies (Snakemake inputs, DVC deps), and their
hash goes into each artifact's provenance.
"""
from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

from stages.common.params import PACKAGE_DIR

ROOT = PACKAGE_DIR.parent


def module_file(module: str) -> Path:
    """`stages.koopman.train` (or `koopman.train`) -> its .py file."""
    parts = module.split(".")
    if parts[0] != "stages":
        parts = ["stages", *parts]
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no module {'.'.join(parts)} under {ROOT}")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n == "stages" or n.startswith("stages.")}


@cache
def code_files(module: str) -> tuple[str, ...]:
    """Repository-relative paths of the stage's source files, sorted."""
    seen: set[Path] = set()
    todo = [module_file(module)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            try:
                todo.append(module_file(name))
            except FileNotFoundError:
                pass  # `from stages.x import function` names a symbol, not a module
    return tuple(sorted(str(p.relative_to(ROOT)) for p in seen))


def code_sha256(module: str) -> str:
    digest = hashlib.sha256()
    for rel in code_files(module):
        digest.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes())
    return digest.hexdigest()[:16]
