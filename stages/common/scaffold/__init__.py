"""`python -m stages new <method>`: a working skeleton method from the templates in this folder.

The templates are plain files with `{{method}}` / `{{Method}}` / `{{METHOD}}` placeholders (no template engine); the
generator copies them into place, then appends the method's block to params.yaml and to the two
profile overlays. Nothing is written when any target file exists already.
"""
from __future__ import annotations

import keyword
import re
from pathlib import Path

from stages.common.code import ROOT

HERE = Path(__file__).resolve().parent
# template file -> where it goes (relative to the project root)
FILES = {
    "rules.smk.tmpl": "stages/{method}/rules.smk",
    "params.schema.yaml.tmpl": "stages/{method}/params.schema.yaml",
    "init.py.tmpl": "stages/{method}/__init__.py",
    "train.py.tmpl": "stages/{method}/train.py",
    "aggregate.py.tmpl": "stages/{method}/aggregate.py",
    "env.yaml.tmpl": "envs/{method}.yaml",
    "test.py.tmpl": "tests/test_{method}.py",
}
# params blocks appended to these files
PARAMS = {"params.block.tmpl": "params.yaml", "tiny.block.tmpl": "config/tiny.yaml",
          "paper.block.tmpl": "config/paper.yaml"}
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ScaffoldError(ValueError):
    """The method name is unusable or the method exists already."""


def render(template: str, method: str) -> str:
    title = method.replace("_", " ").title().replace(" ", "")
    return (template.replace("{{method}}", method).replace("{{Method}}", title)
            .replace("{{METHOD}}", method.upper()))


def env_pins(root: Path) -> str:
    """The pip pins of the base env (koopman's: torch + the data stack), shared by every new method."""
    lines = (root / "envs" / "koopman.yaml").read_text().splitlines()
    start = lines.index("  - pip:") + 1
    return "\n".join(lines[start:])


def check_name(method: str, root: Path = ROOT) -> None:
    if not NAME.match(method) or keyword.iskeyword(method):
        raise ScaffoldError(f"method name '{method}' must be lower_snake_case (a-z, 0-9, _), "
                            "starting with a letter, not a Python keyword")
    if method in {"common", "envs", "rl", "llm", "chem", "stage", "all"}:
        raise ScaffoldError(f"'{method}' is a shared package or reserved rule name, not a method")
    taken = [rel.format(method=method) for rel in FILES.values() if (root / rel.format(method=method)).exists()]
    if taken or (root / "stages" / method).exists():
        raise ScaffoldError(f"method '{method}' exists already ({', '.join(taken) or f'stages/{method}'})")
    for target in PARAMS.values():
        text = (root / target).read_text()
        if re.search(rf"(?m)^{method}:", text):
            raise ScaffoldError(f"{target} already has a top-level '{method}:' block")


def new_method(method: str, root: Path = ROOT) -> list[Path]:
    """Write the skeleton; returns the files written or changed."""
    check_name(method, root)
    written = []
    for tmpl, rel in FILES.items():
        text = render((HERE / tmpl).read_text(), method)
        if tmpl == "env.yaml.tmpl":
            text = text.replace("{{pins}}", env_pins(root))
        path = root / rel.format(method=method)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    for tmpl, rel in PARAMS.items():
        path = root / rel
        block = render((HERE / tmpl).read_text(), method)
        text = path.read_text()
        path.write_text(text.rstrip("\n") + "\n\n" + block)
        written.append(path)
    return written
