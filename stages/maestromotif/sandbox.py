"""A sandbox for LLM-written Python (the policy over skills). Two layers, each enough on its own for the
attacks we know of, both always on:

1. `check(source)`: the code is parsed with `ast` and accepted only if every node type is on an
   allow-list (no import, class, try, with, global, yield, async, decorators), every name it reads is a
   safe builtin or a name the code itself binds, every attribute is on an allow-list of plain container /
   string methods and state fields (so no `__class__`, no `format` - "{0.__class__}" - no frame or code
   objects), no name or attribute starts with an underscore, and no `while` has a constant-true test.
   Every loop, comprehension and function call is then instrumented with a step counter.
2. `Sandbox`: the checked code runs in a separate interpreter (`python -I -S`, empty environment, empty
   temporary working directory, stdin/stdout pipes only) with RLIMIT_CPU (per call), RLIMIT_AS (memory),
   RLIMIT_FSIZE = 0 (no file writes), RLIMIT_NOFILE = 3 set after start-up (no new file or socket can be
   opened), RLIMIT_CORE = 0, a new network namespace where the kernel allows it, restricted builtins, a
   recursion limit, a step limit, and a wall-clock timeout enforced by the parent (SIGKILL).

A violation is a `Result` with status "refused" (the checker), "error" (an exception in the code, the
step limit), "killed" (a resource limit or the timeout) and a one-line reason: never an exception in the
caller. The worker is persistent (one process answers many calls, as the policy over skills is asked at
every skill switch) and is restarted after a kill.
"""
from __future__ import annotations

import ast
import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_SOURCE_CHARS = 20_000
MAX_REPLY_BYTES = 1 << 20

# ---- layer 1: the static checker ----------------------------------------------------------------------

ALLOWED_NODES = {
    ast.Module, ast.Expr, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Assign, ast.AugAssign,
    ast.AnnAssign, ast.If, ast.For, ast.While, ast.Break, ast.Continue, ast.Pass, ast.Assert,
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Call, ast.keyword, ast.Name,
    ast.Constant, ast.Attribute, ast.Subscript, ast.Slice, ast.Starred, ast.Tuple, ast.List, ast.Dict,
    ast.Set, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.Lambda,
    ast.JoinedStr, ast.FormattedValue, ast.Load, ast.Store, ast.Del, ast.Delete,
    ast.And, ast.Or, ast.Not, ast.Invert, ast.UAdd, ast.USub,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift,
    ast.BitOr, ast.BitXor, ast.BitAnd, ast.MatMult,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn,
}
SAFE_BUILTINS = (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "int", "isinstance",
    "len", "list", "map", "max", "min", "pow", "print", "range", "reversed", "round", "set", "sorted",
    "str", "sum", "tuple", "zip", "True", "False", "None", "ValueError", "KeyError",
)
# plain container / string methods and the state fields; no `format`/`format_map` (attribute walks in
# format strings), nothing that reaches types, frames, code objects or generators' internals
ALLOWED_ATTRIBUTES = {
    "append", "extend", "insert", "pop", "remove", "index", "count", "sort", "reverse", "copy", "clear",
    "get", "keys", "values", "items", "setdefault", "update", "add", "discard", "union", "intersection",
    "difference", "issubset", "issuperset", "lower", "upper", "strip", "lstrip", "rstrip", "split",
    "startswith", "endswith", "replace", "join", "find", "isdigit", "isalpha", "title", "capitalize",
    # fields of the game state the policy over skills reads (see skills.STATE_FIELDS)
    "depth", "dungeon_num", "gold", "hp", "hp_max", "xlvl", "hunger", "turn", "steps_in_skill",
    "current_skill", "shopkeeper_in_view", "altar_in_view", "has_items", "branch_depth", "target_depth",
    "in_branch", "task", "skills", "last_depth", "stairs_down_seen", "stairs_up_seen",
}
FORBIDDEN_NAMES = {"eval", "exec", "open", "getattr", "setattr", "delattr", "globals", "locals", "vars",
                   "compile", "input", "breakpoint", "help", "type", "object", "super", "memoryview",
                   "dir", "id", "iter", "next", "classmethod", "staticmethod", "property", "exit", "quit"}


class Refused(Exception):
    """The checker's reason for refusing a program."""


def _bound_names(tree: ast.AST) -> set[str]:
    """Every name the program binds: assignment / loop / comprehension targets, functions, arguments."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def check(source: str) -> ast.Module:
    """Parse and check `source`; returns its tree or raises Refused with the first violation."""
    if not isinstance(source, str):
        raise Refused(f"code must be text, got {type(source).__name__}")
    if len(source) > MAX_SOURCE_CHARS:
        raise Refused(f"code is {len(source)} characters (limit {MAX_SOURCE_CHARS})")
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as exc:
        raise Refused(f"does not parse: {exc.msg} (line {exc.lineno})") from None
    except (RecursionError, MemoryError, ValueError) as exc:   # deep nesting, NUL bytes
        raise Refused(f"does not parse: {type(exc).__name__}") from None
    bound = _bound_names(tree)
    for node in ast.walk(tree):
        where = f" (line {getattr(node, 'lineno', '?')})"
        if type(node) not in ALLOWED_NODES:
            raise Refused(f"{type(node).__name__} is not allowed{where}")
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                raise Refused(f"name '{node.id}' starts with an underscore{where}")
            if node.id in FORBIDDEN_NAMES:
                raise Refused(f"name '{node.id}' is forbidden{where}")
            if isinstance(node.ctx, ast.Load) and node.id not in bound and node.id not in SAFE_BUILTINS:
                raise Refused(f"name '{node.id}' is neither a safe builtin nor defined by the code{where}")
            if node.id in SAFE_BUILTINS and not isinstance(node.ctx, ast.Load):
                raise Refused(f"builtin '{node.id}' may not be rebound{where}")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise Refused(f"attribute '{node.attr}' starts with an underscore{where}")
            if node.attr not in ALLOWED_ATTRIBUTES:
                raise Refused(f"attribute '{node.attr}' is not on the allow-list{where}")
        elif isinstance(node, ast.FunctionDef):
            if node.decorator_list:
                raise Refused(f"decorators are not allowed{where}")
            if node.name.startswith("_") or node.name in SAFE_BUILTINS:
                raise Refused(f"function name '{node.name}' is not allowed{where}")
        elif isinstance(node, ast.arg) and node.arg.startswith("_"):
            raise Refused(f"argument '{node.arg}' starts with an underscore{where}")
        elif isinstance(node, ast.While):
            test = node.test
            if isinstance(test, ast.Constant) and test.value:
                raise Refused(f"'while {test.value!r}' has no bound the checker can see; use "
                              f"'for step in range(N)'{where}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            raise Refused(f"bytes literals are not allowed{where}")
    return tree


class _Instrument(ast.NodeTransformer):
    """Counts steps: every loop iteration, every comprehension element and every function entry calls
    `_tick()` (names with an underscore cannot appear in checked code, so the program cannot touch it)."""

    @staticmethod
    def _tick() -> ast.Expr:
        return ast.Expr(ast.Call(ast.Name("_tick", ast.Load()), [], []))

    def _guard(self, it: ast.expr) -> ast.expr:
        return ast.Call(ast.Name("_guard", ast.Load()), [it], [])

    def visit_For(self, node):
        self.generic_visit(node)
        node.iter = self._guard(node.iter)
        node.body.insert(0, self._tick())
        return node

    def visit_While(self, node):
        self.generic_visit(node)
        node.body.insert(0, self._tick())
        return node

    def visit_FunctionDef(self, node):
        self.generic_visit(node)
        node.body.insert(0, self._tick())
        return node

    def visit_comprehension(self, node):
        self.generic_visit(node)
        node.iter = self._guard(node.iter)
        return node

    def visit_Lambda(self, node):
        self.generic_visit(node)   # a lambda body is an expression: tick, then evaluate it
        node.body = ast.BoolOp(ast.Or(), [ast.Call(ast.Name("_tick", ast.Load()), [], []), node.body])
        return node


def instrument(tree: ast.Module) -> str:
    """The checked program with step counting, as source for the worker."""
    return ast.unparse(ast.fix_missing_locations(_Instrument().visit(tree)))


# ---- layer 2: the worker process ------------------------------------------------------------------------

# Runs in `python -I -S -c WORKER` with an empty environment. Reads one JSON line per request from stdin
# and writes one JSON line per reply; the program never sees sys, json or the pipes.
WORKER = r'''
import json, resource, sys
def main():
    cfg = json.loads(sys.argv[1])
    try:   # a network namespace of its own: no interface but a down loopback (needs CAP_SYS_ADMIN)
        import ctypes
        netns = ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0
    except Exception:
        netns = False
    rin, rout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdin = sys.stdout = sys.stderr = None
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3))
    sys.setrecursionlimit(cfg["recursion"])
    def send(obj):
        data = json.dumps(obj, default=repr).encode()
        if len(data) > cfg["max_reply"]:
            data = json.dumps({"status": "error", "reason": "reply too large"}).encode()
        rout.write(data + b"\n"); rout.flush()
    class StepLimit(BaseException):
        pass
    steps = [0]
    def _tick():
        steps[0] += 1
        if steps[0] > cfg["max_steps"]:
            raise StepLimit(f"step limit {cfg['max_steps']} exceeded")
    def _guard(iterable):
        for item in iterable:
            _tick()
            yield item
    class State(dict):
        def __getattr__(self, name):
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None
    printed = []
    def safe_print(*args, **kw):
        if len(printed) < 200:
            printed.append(" ".join(str(a) for a in args)[:500])
    import builtins
    safe = {n: getattr(builtins, n) for n in cfg["builtins"] if n != "print"}
    safe["print"] = safe_print
    env = {"__builtins__": safe, "_tick": _tick, "_guard": _guard, "__name__": "policy"}
    send({"status": "ready", "netns": netns})
    def usage():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    def limit_cpu():
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(usage()) + cfg["cpu_s"] + 1
        resource.setrlimit(resource.RLIMIT_CPU, (min(soft, hard), hard))
    loaded = False
    for line in rin:
        req = json.loads(line)
        steps[0] = 0
        printed.clear()
        limit_cpu()
        try:
            if req["op"] == "load":
                exec(compile(req["code"], "<policy>", "exec"), env)
                loaded = True
                out = {"status": "ok", "value": env.get("result")}
            else:
                if not loaded or not callable(env.get(req["fn"])):
                    raise NameError(f"the code defines no function {req['fn']!r}")
                args = [State(a) if isinstance(a, dict) else a for a in req["args"]]
                value = env[req["fn"]](*args)
                json.dumps(value)
                out = {"status": "ok", "value": value}
        except StepLimit as exc:
            out = {"status": "error", "reason": str(exc)}
        except RecursionError:
            out = {"status": "error", "reason": "RecursionError: recursion too deep"}
        except MemoryError:
            out = {"status": "killed", "reason": "MemoryError: memory limit reached"}
        except BaseException as exc:
            out = {"status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
        out["printed"] = list(printed)
        send(out)
main()
'''


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed call."""

    cpu_s: int = 1
    """CPU seconds per call (RLIMIT_CPU, re-armed before each call; SIGXCPU kills the worker)."""
    wall_s: float = 3.0
    """Wall-clock seconds per call before the parent kills the worker (covers start-up on the first call)."""
    memory_mb: int = 256
    """Address-space limit of the worker (RLIMIT_AS)."""
    max_steps: int = 100_000
    """Loop iterations + comprehension elements + function calls per call."""
    recursion: int = 100
    """Python recursion limit in the worker."""
    lifetime_cpu_s: int = 600
    """Hard CPU limit of one worker over all its calls (it is restarted when killed)."""


@dataclass
class Result:
    """What happened to one program or call: status ok / refused / error / killed (limits, timeout)."""

    status: str
    value: Any = None
    reason: str = ""
    printed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict:
        return asdict(self)


def _limit_process(limits: Limits):
    def apply() -> None:   # in the child, between fork and exec
        mem = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.lifetime_cpu_s, limits.lifetime_cpu_s))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.setsid()   # its own process group: a kill reaches everything it might start
    return apply


class Sandbox:
    """One checked program in one worker process. `load()` checks and runs the module body; `call(fn,
    *args)` calls one of its functions with JSON-able arguments (dicts arrive as read-only-ish `State`
    dicts that also allow `state.depth`). Every outcome is a `Result`; a killed worker is restarted and
    the program reloaded on the next call."""

    def __init__(self, source: str, limits: Limits | None = None):
        self.source, self.limits = source, limits or Limits()
        self.code: str | None = None
        self.proc: subprocess.Popen | None = None
        self.netns = False
        self.refusal: Result | None = None
        self.calls = 0
        self.restarts = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="sandbox-")

    # -- process management --
    def _start(self) -> Result | None:
        cfg = {"recursion": self.limits.recursion, "max_steps": self.limits.max_steps,
               "cpu_s": self.limits.cpu_s, "builtins": list(SAFE_BUILTINS), "max_reply": MAX_REPLY_BYTES}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", WORKER, json.dumps(cfg)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={}, cwd=self._tmp.name,
            preexec_fn=_limit_process(self.limits), close_fds=True)
        ready = self._read(self.limits.wall_s + 5.0)
        if ready.status != "ready":
            return Result("killed", reason=f"sandbox worker did not start: {ready.reason}")
        self.netns = bool(ready.value)
        return None

    def _kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                stream.close()
            self.proc = None

    def _read(self, timeout: float) -> Result:
        """One reply line from the worker within `timeout` seconds, else kill it."""
        assert self.proc is not None and self.proc.stdout is not None
        fd, buf, deadline = self.proc.stdout.fileno(), b"", time.monotonic() + timeout
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._kill()
                return Result("killed", reason=f"wall-clock timeout ({timeout:g} s)")
            chunk = os.read(fd, 65536)
            if not chunk:   # the worker died: a resource limit (SIGXCPU, SIGKILL, SIGSEGV...)
                code = self.proc.wait()
                self._kill()
                why = {-signal.SIGXCPU: f"CPU time limit ({self.limits.cpu_s} s)",
                       -signal.SIGKILL: "killed", -signal.SIGXFSZ: "file size limit",
                       -signal.SIGSEGV: "segmentation fault"}.get(code, f"worker exited with code {code}")
                return Result("killed", reason=why)
            buf += chunk
            if len(buf) > MAX_REPLY_BYTES + 1024:
                self._kill()
                return Result("killed", reason="reply too large")
        reply = json.loads(buf)
        if reply.get("status") == "ready":
            return Result("ready", value=reply.get("netns"))
        return Result(reply["status"], reply.get("value"), reply.get("reason", ""), reply.get("printed", []))

    def _request(self, req: dict) -> Result:
        if self.proc is None:
            failed = self._start()
            if failed is not None:
                return failed
            if req["op"] != "load":
                loaded = self._request({"op": "load", "code": self.code})
                if not loaded.ok:
                    return loaded
        start = time.perf_counter()
        try:
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._kill()
            return Result("killed", reason="sandbox worker died")
        result = self._read(self.limits.wall_s)
        result.seconds = time.perf_counter() - start
        if result.status == "killed" and self.proc is not None:
            self._kill()
        if self.proc is None:
            self.restarts += 1
        return result

    # -- public --
    def load(self) -> Result:
        """Check the program and run its module body; value = its `result` variable, if any."""
        try:
            self.code = instrument(check(self.source))
        except Refused as exc:
            self.refusal = Result("refused", reason=str(exc))
            return self.refusal
        return self._request({"op": "load", "code": self.code})

    def call(self, fn: str, *args: Any) -> Result:
        """Call function `fn` of the loaded program."""
        if self.refusal is not None:
            return self.refusal
        if self.code is None:
            loaded = self.load()
            if not loaded.ok:
                return loaded
        self.calls += 1
        try:
            json.dumps(args)
        except (TypeError, ValueError) as exc:
            return Result("error", reason=f"arguments are not JSON-able: {exc}")
        return self._request({"op": "call", "fn": fn, "args": list(args)})

    def unchecked(self, source: str) -> Result:
        """TESTS ONLY: run `source` in the worker WITHOUT the checker, to show that the process layer
        alone (restricted builtins, rlimits, no new fds, own network namespace) still holds."""
        self.code = source
        return self._request({"op": "load", "code": source})

    def close(self) -> None:
        self._kill()
        self._tmp.cleanup()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_source(source: str, limits: Limits | None = None, fn: str | None = None, *args: Any) -> Result:
    """Check and run `source` once (and call `fn(*args)` when given); the worker is closed after."""
    with Sandbox(source, limits) as box:
        result = box.load()
        if result.ok and fn is not None:
            result = box.call(fn, *args)
        return result


def main(argv: list[str]) -> int:
    """`python -m stages sandbox FILE.py [--call FN --args JSON]`: run a file under the checks and
    limits, print the outcome as JSON; exit 0 when it ran, 1 when refused, 2 when it failed."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m stages sandbox", description=main.__doc__)
    ap.add_argument("file")
    ap.add_argument("--call", default=None, help="function of the file to call after loading it")
    ap.add_argument("--args", default="[]", help="JSON list of the call's arguments")
    ap.add_argument("--cpu-s", type=int, default=Limits.cpu_s)
    ap.add_argument("--wall-s", type=float, default=Limits.wall_s)
    ap.add_argument("--memory-mb", type=int, default=Limits.memory_mb)
    args = ap.parse_args(argv)
    with open(args.file, encoding="utf-8", errors="replace") as fh:
        source = fh.read()
    limits = Limits(cpu_s=args.cpu_s, wall_s=args.wall_s, memory_mb=args.memory_mb)
    result = run_source(source, limits, args.call, *json.loads(args.args))
    print(json.dumps(result.as_dict(), default=repr, indent=1))
    if result.status == "refused":
        print(f"refused: {result.reason}", file=sys.stderr)
        return 1
    if not result.ok:
        print(f"{result.status}: {result.reason}", file=sys.stderr)
        return 2
    return 0
