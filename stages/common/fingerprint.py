"""DVC's view of a stage's code: one small fingerprint file per stage module instead of its source files.

Every stage imports a dozen source files, so listing them as DVC deps gave the graph ~15 deps per stage
(5.6k in all), and DVC's per-dependency cost dominated a no-op `dvc status`. dvc.yaml instead has one
stage, `code_fingerprints`, that depends on every source file once and writes
`data/code/<module>.sha256` (the `sha256  path` lines of the module's code files, `code_files`), and each
stage depends on its module's file. A source edit re-runs `code_fingerprints`; a fingerprint whose bytes
did not change leaves its stages alone, so exactly the stages that import the file re-run, as before.
Snakemake keeps the source files themselves as each rule's `code` input.
"""
from __future__ import annotations

from collections.abc import Iterable

from stages.common.code import ROOT, code_files
from stages.common.files import atomic_path, file_sha256

FINGERPRINT_DIR = "data/code"
STAGE_NAME = "code_fingerprints"


def fingerprint_path(module: str) -> str:
    return f"{FINGERPRINT_DIR}/{module}.sha256"


def fingerprint_text(module: str) -> str:
    """`sha256sum` lines of the module's code files: a diff of two versions names the file that changed."""
    return "".join(f"{file_sha256(ROOT / rel)}  {rel}\n"
                   for rel in code_files(module))


def write(modules: Iterable[str]) -> list[str]:
    written = []
    for module in modules:
        path = ROOT / fingerprint_path(module)
        with atomic_path(path) as tmp:
            tmp.write_text(fingerprint_text(module))
        written.append(str(path.relative_to(ROOT)))
    return written
