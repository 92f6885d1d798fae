"""Run generated code against a task's tests in a separate Python process with a time limit.

The child gets a temporary working directory, no stdin and a wall-clock limit; a crash, a hang or a failed
assert all count as a failure. This is the isolation HumanEval's own harness uses (a subprocess), not a
sandbox: do not evaluate untrusted models on a machine that matters.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class ExecutionResult:
    passed: bool
    reason: str  # "passed", "failed", "timeout"
    stderr_tail: str = ""


def run_python(program: str, timeout_s: float = 10.0) -> ExecutionResult:
    """Execute ``program``; passed when it exits 0 within ``timeout_s``."""
    with tempfile.TemporaryDirectory(prefix="hybrid-eval-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w") as f:
            f.write(program)
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        try:
            proc = subprocess.run([sys.executable, "-I", path], check=False, cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return ExecutionResult(False, "timeout")
    if proc.returncode == 0:
        return ExecutionResult(True, "passed")
    return ExecutionResult(False, "failed", proc.stderr[-400:])
