"""Parse `params.yaml` once per DVC process instead of once per stage, and `dvc.yaml` / `dvc.lock` once
per content instead of once per command.

DVC (3.67) re-reads and re-parses the params file for every stage it checks, with ruamel's Python
constructor, then walks the whole tree with dpath for each key: over the default graph that was most
of a no-op `dvc status`. This module, loaded at interpreter start by a `.pth` file that `./workbench`
writes into the project's venv, wraps `dvc.dependency.param.read_param_file` when DVC imports it: a
workspace file is parsed once per (path, inode, size, mtime), plain dotted keys in the flat form
`dvc status` and `dvc repro` ask for are looked up directly, and every value handed back is a copy.
Anything else (a Git revision's filesystem, glob keys, the nested form, loader options) runs DVC's own
code on the parsed tree.

Second, `dvc.utils.strictyaml.load`, which every command uses to read and schema-check `dvc.yaml` and
`dvc.lock` (about a third of a no-op `dvc status` over 431 stages): after DVC's own function has parsed
and validated a workspace file, its result is kept in `.dvc/tmp/workbench-yaml/` under the file's
name and the SHA-256 of its bytes (with DVC's version), in `marshal` form; the next command with the
same bytes reads that instead. A changed file has another hash and goes through DVC again; a file that
fails to parse or validate is never kept; round-trip loads (the ones DVC edits) always run DVC's code.

It costs nothing until DVC is imported; `WORKBENCH_DVC_HOOK=0` turns it off.
"""
# Imported at every interpreter start in the venv: only modules Python has already loaded by then.
import os
import sys

TARGETS = ("dvc.dependency.param", "dvc.utils.strictyaml")
_GLOB = set("*?[]")
_parsed: dict = {}


def _lookup(config, key_path):
    node = config
    for part in key_path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise LookupError(key_path)
    return node


def cached_read_param_file(original):
    import copy

    from dvc_objects.fs.local import LocalFileSystem

    def read_param_file(fs, path, key_paths=None, flatten=False, **load_kwargs):
        if load_kwargs or not isinstance(fs, LocalFileSystem):
            return original(fs, path, key_paths, flatten, **load_kwargs)
        try:
            st = os.stat(path)
        except OSError:
            return original(fs, path, key_paths, flatten)
        key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _parsed:
            from dvc.utils.serialize import load_path

            _parsed.clear()  # one file version at a time is all a run needs
            _parsed[key] = load_path(path, fs)
        config = _parsed[key]
        plain = flatten and key_paths and not any(_GLOB & set(k) for k in key_paths)
        if not plain:  # DVC's own walk (and its merge of overlapping keys) on the parsed tree
            return original(_Preloaded(fs, path, config), path, key_paths, flatten)
        ret = {}
        for key_path in key_paths:
            try:
                ret[key_path] = copy.deepcopy(_lookup(config, key_path))
            except LookupError:  # missing keys and list indices: as DVC answers them
                return original(_Preloaded(fs, path, config), path, key_paths, flatten)
        return ret

    read_param_file.__wrapped__ = original
    return read_param_file


class _Preloaded:
    """Stands in for the filesystem so DVC's own function works on the already parsed tree."""

    def __init__(self, fs, path, config):
        self.fs, self.path, self.config = fs, path, config

    def __getattr__(self, name):
        return getattr(self.fs, name)


def _patch(module) -> None:
    if module.__name__ == "dvc.utils.strictyaml":
        module.load = remembered_load(module.load)
    else:
        _patch_params(module)


def _cache_dir(path):
    """`.dvc/tmp/workbench-yaml` of the repository holding `path`, or None outside one."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.isdir(os.path.join(folder, ".dvc")):
            return os.path.join(folder, ".dvc", "tmp", "workbench-yaml")
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def remembered_load(original):
    def load(path, schema=None, fs=None, encoding="utf-8", round_trip=False):
        import hashlib
        import marshal

        from dvc_objects.fs.local import LocalFileSystem

        cache = _cache_dir(path)
        if round_trip or cache is None or (fs is not None and not isinstance(fs, LocalFileSystem)):
            return original(path, schema, fs, encoding, round_trip)
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
            # the text DVC's own text-mode read hands back (universal newlines), for its error messages
            text = raw.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")
        except (OSError, UnicodeDecodeError):
            return original(path, schema, fs, encoding, round_trip)
        from dvc import __version__

        name = os.path.basename(path)
        digest = hashlib.sha256(f"{__version__}\0{encoding}\0{schema is not None}\0".encode() + raw).hexdigest()
        entry = os.path.join(cache, f"{name}.{digest}.marshal")
        try:
            with open(entry, "rb") as fh:
                return marshal.load(fh), text
        except (OSError, EOFError, ValueError, TypeError):
            pass  # not kept yet, or a damaged entry: DVC's own parse and check
        data, text = original(path, schema, fs, encoding, round_trip)
        try:
            blob = marshal.dumps(data)
        except ValueError:  # a type marshal cannot hold (e.g. a YAML timestamp): not kept
            return data, text
        try:
            os.makedirs(cache, exist_ok=True)
            for old in os.listdir(cache):  # one entry per file name: the previous content is stale
                if old.startswith(name + ".") and old != os.path.basename(entry):
                    os.unlink(os.path.join(cache, old))
            tmp = f"{entry}.{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(blob)
            os.replace(tmp, entry)
        except OSError:
            pass  # a read-only checkout works, it only parses every time
        return data, text

    load.__wrapped__ = original
    return load


def _patch_params(module) -> None:
    import copy

    original = module.read_param_file
    module.read_param_file = cached_read_param_file(original)
    from dvc.utils import serialize

    load_path = serialize.load_path

    def load_preloaded(fs_path, fs, **kwargs):
        if isinstance(fs, _Preloaded) and fs_path == fs.path and not kwargs:
            return copy.deepcopy(fs.config)
        return load_path(fs_path, fs, **kwargs)

    module.load_path = load_preloaded


class _Finder:  # a meta path finder needs only find_spec
    def find_spec(self, name, path=None, target=None):
        if name not in TARGETS:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def install() -> None:
    """Patch DVC when it is imported; `WORKBENCH_DVC_HOOK=0` leaves it alone (the benchmark's baseline)."""
    if os.environ.get("WORKBENCH_DVC_HOOK", "1") == "0":
        return
    for name in TARGETS:
        if name in sys.modules:
            _patch(sys.modules[name])
    if not all(name in sys.modules for name in TARGETS) and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
