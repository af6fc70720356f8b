"""Params: load `params.yaml` (plus profile overlays), validate against the schema, select dotted keys.

The schema is composed from one `params.schema.yaml` per method folder (`stages/<method>/`), each
describing `params[<method>]`. A shared package's block schema (e.g. `stages/llm/config.schema.yaml`) is
included with `$include: llm/config.schema.yaml` (path relative to `stages/`). Every object in it forbids
unknown keys, so a typo stops the run with a
message naming the key before any work is done.
"""
from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from stages.common.files import atomic_path

if TYPE_CHECKING:
    import jsonschema

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# libyaml's parser where PyYAML was built with it (the wheels are): the schemas are read on every
# `snakemake` invocation, and the pure-Python loader made that a large share of a no-op run.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_YAML_LOADER)


class ParamsError(ValueError):
    """A params file or value does not match the schema."""


def method_dirs() -> list[Path]:
    return sorted(p.parent for p in PACKAGE_DIR.glob("*/params.schema.yaml"))


def _load_schema(path: Path) -> Any:
    return _inline_includes(_safe_load(path.read_text()))


def _inline_includes(node: Any) -> Any:
    if isinstance(node, dict):
        if "$include" in node:
            return _load_schema(PACKAGE_DIR / node["$include"])
        return {k: _inline_includes(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_includes(v) for v in node]
    return node


@lru_cache(maxsize=1)
def full_schema() -> dict:
    props = {d.name: _load_schema(d / "params.schema.yaml") for d in method_dirs()}
    return {"type": "object", "properties": props, "required": sorted(props),
            "additionalProperties": False}


def deep_merge(base: Mapping, overlay: Mapping) -> dict:
    """Overlay wins; nested mappings merge key by key (the same rule Snakemake applies to configfiles)."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_params_file(path: str | Path) -> dict:
    """One params file as a mapping (not validated)."""
    try:
        data = _safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"{path}: cannot read params file ({exc})") from exc
    if not isinstance(data, Mapping):
        raise ParamsError(f"{path}: params file must hold a mapping at the top level")
    return data


def load_params(*files: str | Path) -> dict:
    """Load and deep-merge params files in order, then validate the result."""
    merged: dict = {}
    for f in files:
        merged = deep_merge(merged, read_params_file(f))
    validate(merged, source=", ".join(map(str, files)))
    return merged


def _format_error(err: jsonschema.ValidationError, prefix: str = "") -> str:
    where = ".".join([prefix] * bool(prefix) + [str(p) for p in err.absolute_path])
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        keys = ", ".join(f"'{where + '.' if where else ''}{k}'" for k in extra)
        return f"unknown key {keys} (allowed here: {', '.join(allowed)})"
    if err.validator == "required":
        return f"{where or '<top>'}: {err.message}"
    return f"key '{where}': {err.message}"


# Every `snakemake` invocation validates the whole config; the answer depends only on the config and
# the schema files, so a config that passed is remembered by their hash (a missing or corrupt cache
# only means validating again).
VALID_CACHE = PACKAGE_DIR.parent / ".cache" / "valid_params.json"


def validate_remembered(params: Mapping, source: str) -> None:
    """`validate` against the full schema, skipped when this exact config passed before."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for path in sorted(PACKAGE_DIR.rglob("*.schema.yaml")):
        digest.update(path.read_bytes())
    key = digest.hexdigest()
    try:
        if json.loads(VALID_CACHE.read_text()) == key:
            return
    except (OSError, ValueError):
        pass
    validate(params, source=source)
    try:
        with atomic_path(VALID_CACHE) as tmp:
            tmp.write_text(json.dumps(key))
    except OSError:
        pass  # read-only checkout: validates every time


def validate(params: Any, source: str = "params", schema: Mapping | None = None,
             prefix: str = "") -> None:
    """Raise ParamsError listing every violation, each naming its dotted key."""
    import jsonschema  # here: a remembered config needs no validator, and the import costs ~40 ms

    validator = jsonschema.Draft202012Validator(schema or full_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n  ".join(_format_error(e, prefix) for e in errors)
        raise ParamsError(f"invalid params in {source}:\n  {lines}")


def get_path(params: Mapping, dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ParamsError(f"params key '{dotted}' does not exist (missing '{part}')")
        node = node[part]
    return node


def schema_at(dotted: str) -> dict:
    """The sub-schema describing the value at a dotted key."""
    node: dict = full_schema()
    for part in dotted.split("."):
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            raise ParamsError(f"params key '{dotted}' is not in the schema")
    return node


def select(params: Mapping, dotted_keys: Iterable[str]) -> dict:
    """{dotted key: value} for exactly the keys a stage reads."""
    return {k: copy.deepcopy(get_path(params, k)) for k in dotted_keys}


def validate_selected(selected: Mapping[str, Any], source: str) -> None:
    for key, value in selected.items():
        validate(value, source=source, schema=schema_at(key), prefix=key)


def params_hash(selected: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(selected, sort_keys=True).encode()).hexdigest()[:16]
