"""One run of a grid in a process of its own (`gradus train` with the cell's
overrides): a crash in native code (torch, vLLM, Ray) ends that run, not the
grid; each run's memory goes back to the system when it ends; and every run
imports gradus as it is when the run starts, driver and workers alike. A stop
signal to the grid's process is passed on: the run checkpoints, exits with
EXIT_PREEMPTED, and the grid stops with it."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from gradus.launch.errors import GradusError
from gradus.launch.run.preempt import EXIT_PREEMPTED, Preempted


def train_command(config: Path, overrides: list[str], resume: str | None) -> list[str]:
    """The `gradus train` command of one run: a fresh start overwrites a run
    directory left without a checkpoint, a resume continues from `resume`."""
    flags = ["--resume", resume] if resume else ["--overwrite"]
    return [sys.executable, "-m", "gradus.launch.cli", "train", str(config), *overrides, *flags]


def _tee(stream: IO[str], errors: list[str]) -> None:
    """Copy the run's stderr to ours line by line, keeping its last error line."""
    for line in stream:
        sys.stderr.write(line)
        sys.stderr.flush()
        if line.startswith("gradus: error:"):
            errors.append(line.removeprefix("gradus: error:").strip())


def run_isolated(command: list[str], stop_signals: list[str]) -> None:
    """Run `command` to its end; raise GradusError with its error line if it
    fails (a signal that kills it named), Preempted if it stopped on a signal or
    the grid got one: a run killed by SIGTERM before it could catch it (during
    its imports, say) stops the grid too, not only that run."""
    errors: list[str] = []
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    reader = threading.Thread(target=_tee, args=(child.stderr, errors), daemon=True)
    reader.start()
    forward = {getattr(signal, name) for name in [*stop_signals, "SIGTERM"]}
    main = threading.current_thread() is threading.main_thread()
    received: list[int] = []

    def pass_on(signum: int, _frame: object) -> None:
        received.append(signum)
        child.send_signal(signum)

    previous = {s: signal.signal(s, pass_on) for s in forward} if main else {}
    try:
        code = child.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the run too (one process group): let it stop, then stop the grid
        child.wait()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        reader.join(timeout=5)  # a process the run left behind may hold its stderr open: do not wait for it
    resumes = "re-running resumes from its newest checkpoint, if it has one"
    if received and code != EXIT_PREEMPTED:  # the grid was told to stop, however the run ended: so does the grid
        how = f"and stopped its run; {resumes}" if code else "as the run finished; re-running goes on with the next"
        raise Preempted(f"the grid got {signal.Signals(received[0]).name} {how}")
    if code == EXIT_PREEMPTED:
        raise Preempted(errors[-1] if errors else f"the run stopped on a signal; {resumes}")
    if code < 0:
        raise GradusError(f"the run was killed by {signal.Signals(-code).name}; its newest checkpoint is kept")
    if code:
        raise GradusError(errors[-1] if errors else f"the run exited with code {code}")
