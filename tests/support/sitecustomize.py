"""Loaded by every Python process of the fresh-clone test (PYTHONPATH): records each file opened under
a forbidden folder (e.g. the folder holding the original checkout and ../shared) to a log."""
import os
import sys

_forbidden = [p for p in os.environ.get("WORKBENCH_FORBIDDEN", "").split(os.pathsep) if p]
_allowed = [p for p in os.environ.get("WORKBENCH_ALLOWED", "").split(os.pathsep) if p]
_log = os.environ.get("WORKBENCH_OPEN_LOG")


def _hook(event, args):
    if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    try:
        path = os.path.realpath(os.fsdecode(args[0]))
    except (TypeError, ValueError):
        return
    if any(path.startswith(f) for f in _forbidden) and not any(path.startswith(a) for a in _allowed):
        with open(_log, "a") as fh:  # the hook is not re-entered for its own open
            fh.write(f"{os.getpid()} {path}\n")


if _forbidden and _log:
    sys.addaudithook(_hook)
