"""Which source files a stage runs: its module and every `stages.*` module it imports, transitively.

Both engines see these files as the stage's code dependencies (Snakemake inputs, DVC deps), and their
hash goes into each artifact's provenance.
"""
from __future__ import annotations

import ast
import hashlib
import json
from functools import cache
from pathlib import Path

from stages.common.files import atomic_path
from stages.common.params import PACKAGE_DIR

ROOT = PACKAGE_DIR.parent


@cache
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


# The import scan of a file depends on its bytes only, so it is cached on disk by content hash: every
# `snakemake` invocation and every stage start needs the code files of many stages, and parsing them all
# was the largest part of a no-op `snakemake -n`. A missing, unreadable or corrupt cache is rebuilt.
IMPORTS_CACHE = ROOT / ".cache" / "stage_imports.json"
_disk: dict[str, list[str]] | None = None
_dirty = False


def _disk_cache() -> dict[str, list[str]]:
    global _disk
    if _disk is None:
        try:
            loaded = json.loads(IMPORTS_CACHE.read_text())
            _disk = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            _disk = {}
    return _disk


def _save_disk_cache() -> None:
    global _dirty
    if not _dirty or _disk is None:
        return
    try:
        with atomic_path(IMPORTS_CACHE) as tmp:
            tmp.write_text(json.dumps(_disk))
        _dirty = False
    except OSError:
        pass  # a read-only checkout still works, it only parses again next time


def _scan_imports(source: bytes, path: Path) -> list[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return sorted(n for n in names if n == "stages" or n.startswith("stages."))


@cache
def _imports(path: Path) -> frozenset[str]:
    """`stages.*` names the file imports."""
    global _dirty
    source = path.read_bytes()
    key = hashlib.sha1(source).hexdigest()
    cached = _disk_cache().get(key)
    if not isinstance(cached, list):
        cached = _scan_imports(source, path)
        _disk_cache()[key] = cached
        _dirty = True
    return frozenset(cached)


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
    _save_disk_cache()
    return tuple(sorted(str(p.relative_to(ROOT)) for p in seen))


def code_sha256(module: str) -> str:
    digest = hashlib.sha256()
    for rel in code_files(module):
        digest.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes())
    return digest.hexdigest()[:16]
