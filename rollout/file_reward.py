"""Reward functions from a file (`verifier: path/to/reward.py:compute_score`),
verl's custom_reward_function signature:
`compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs)`
returning a float or a dict with "score" (other numeric keys are passed on).

They run in one child Python process per rollout worker, under a deadline:
- not SIGALRM: it only works in the main thread, and the user's code may set
  its own alarms;
- not a thread with a join timeout: a thread cannot be stopped, and a hung C
  call (a regex backtracking, a sympy simplify) holds the GIL, so the worker
  would stall with it;
- a process is killed when it runs past the deadline and started again on the
  next call (the file is imported again, outside the deadline).
Any exception in the user's code scores 0 and is counted as an error; the run
goes on. Calls cost one pickle round trip through a pipe (well under 1 ms).
"""

from __future__ import annotations

import math
import numbers
import os
import pickle
import re
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

FILE_TIMEOUT_S = 5.0  # per call of a user's reward function
LOAD_TIMEOUT_S = 120.0  # importing the file (it may import heavy libraries)
_HEADER = struct.Struct("<Q")
# Environment variables the reward process does not inherit: credentials by their usual names.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE|AUTH|SESSION", re.IGNORECASE)


class RewardError(Exception):
    """The user's function raised, returned something unusable, or its process died."""


def normalise(result: Any) -> dict[str, float]:
    """A float or a dict with 'score' as {"score": float, other numeric keys}."""
    if isinstance(result, dict):
        out = {
            str(k): float(v) for k, v in result.items() if isinstance(v, numbers.Real) or type(v).__name__ == "bool_"
        }
        if "score" not in out:
            raise TypeError(f"returned a dict without a numeric 'score' (keys {sorted(result)})")
    elif isinstance(result, numbers.Real):
        out = {"score": float(result)}
    else:
        raise TypeError(f"returned {type(result).__name__}; return a float or a dict with 'score'")
    bad = {k: v for k, v in out.items() if not math.isfinite(v)}
    if bad:  # a NaN acc would count as correct (bool(nan) is True)
        raise ValueError(f"returned non-finite values {bad}")
    return out


def _read(fd: int, size: int, deadline: float) -> bytes:
    chunks = []
    while size:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(fd, size)
        if not chunk:
            raise RewardError("the reward process exited (did the function call exit() or crash?)")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class RewardHost:
    """The child process and the deadline around each call; thread-safe."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.loaded: set[str] = set()
        self.lock = threading.Lock()

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[1])
        env = {k: v for k, v in os.environ.items() if not SECRET_NAME.search(k)}  # the user's code gets no secrets
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gradus.rollout.file_reward"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=env,
        )
        self.loaded = set()

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def _ask(self, message: tuple, timeout: float) -> Any:
        data = pickle.dumps(message)
        self.proc.stdin.write(_HEADER.pack(len(data)) + data)
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        (size,) = _HEADER.unpack(_read(fd, _HEADER.size, deadline))
        ok, value = pickle.loads(_read(fd, size, deadline))
        if not ok:
            raise RewardError(value)
        return value

    def call(self, spec: str, kwargs: dict[str, Any], timeout: float = FILE_TIMEOUT_S) -> dict[str, float]:
        """The normalised result; raises TimeoutError (the process is killed) or RewardError."""
        with self.lock:
            try:
                if self.proc is None or self.proc.poll() is not None:
                    self._start()
                if spec not in self.loaded:
                    self._ask(("load", spec, None), LOAD_TIMEOUT_S)
                    self.loaded.add(spec)
                return self._ask(("call", spec, kwargs), timeout)
            except TimeoutError:
                self._kill()
                raise
            except (OSError, EOFError, pickle.PickleError, TypeError) as err:  # TypeError: an unpicklable answer
                self._kill()
                raise RewardError(f"{type(err).__name__}: {err}") from None


HOST = RewardHost()


def file_score(
    spec: str, completion: str, answer: Any, row: dict | None, timeout: float = FILE_TIMEOUT_S
) -> tuple[dict[str, float], str, str | None]:
    """(result, status, message) of one call: status "ok", "error" or "timeout"
    (then result {"score": 0.0} and a one-line message, which the driver shows)."""
    row = row or {}
    kwargs = {
        "data_source": row.get("data_source", row.get("distribution")),
        "solution_str": completion,
        "ground_truth": answer,
        "extra_info": row.get("extra_info"),
    }
    try:
        return HOST.call(spec, kwargs, timeout), "ok", None
    except TimeoutError:
        return {"score": 0.0}, "timeout", f"reward function {spec} ran past its {timeout:g} s deadline"
    except RewardError as err:
        return {"score": 0.0}, "error", f"reward function {spec}: {err}"


def serve() -> None:
    """The child: length-prefixed pickles in on stdin, out on the original stdout
    (the user's prints go to stderr)."""
    from gradus.curriculum.registry import load_plugin

    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    functions: dict[str, Any] = {}
    while True:
        header = sys.stdin.buffer.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        op, spec, kwargs = pickle.loads(sys.stdin.buffer.read(_HEADER.unpack(header)[0]))
        try:
            if op == "load":
                functions[spec], value = load_plugin(spec, "reward function"), None
            else:
                value = normalise(functions[spec](**kwargs))
            reply = pickle.dumps((True, value))
        except (Exception, SystemExit) as err:  # noqa: BLE001 - any failure of the user's code is a counted error
            reply = pickle.dumps((False, f"{type(err).__name__}: {err}".splitlines()[0][:500]))
        out.write(_HEADER.pack(len(reply)) + reply)


if __name__ == "__main__":
    serve()
