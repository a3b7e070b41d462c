"""Deterministic kill points for fault tests: run the command line in a child process that
sends itself SIGKILL (as `kill -9` would: no cleanup, no flush of Python's buffers) at the
N-th call of a named function, before or after the call runs.

The target is "module:attribute.path", patched where it is looked up: `os:replace` patches
every caller of os.replace, `perturbglm.io.summaries:Store.add` a method, and a function
imported by name must be patched in the importing module (`perturbglm.io.scan:check_counts`).
`setup` is extra Python run in the child before the command (e.g. to force spilling).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

_CHILD = """
import importlib, json, os, signal, sys
spec = json.loads(sys.argv[1])
exec(spec["setup"])
module, _, attr = spec["target"].partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
real = getattr(owner, name)
calls = [0]

def killing(*args, **kwargs):
    calls[0] += 1
    hit = calls[0] == spec["nth"]
    if hit and spec["when"] == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if hit and spec["when"] == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result

setattr(owner, name, killing)
from perturbglm.cli import main
sys.exit(main(spec["argv"]))
"""


def run_killed(argv: list[str], target: str, nth: int = 1, when: str = "before",
               setup: str = "", timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `perturbglm ARGV` in a child that kills itself at the nth call of `target`.
    Returns the finished process; `killed(proc)` tells whether the kill point was reached
    (a run that ended first exits normally)."""
    spec = {"argv": argv, "target": target, "nth": nth, "when": when, "setup": setup}
    return subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout)


def killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL


def run_cli(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `perturbglm ARGV` in a child process, to completion."""
    return subprocess.run([sys.executable, "-m", "perturbglm", *argv], capture_output=True,
                          text=True, timeout=timeout)
