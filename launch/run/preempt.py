"""Stopping a run when the cluster says so.

A warning signal (run.preempt_signal, SIGUSR1 by default; SLURM sends it with
`--signal=B:USR1@SECONDS`) and SIGTERM (scancel, preemption without warning)
only set a flag here: the step loop finishes the step in flight, checkpoints
it and exits with EXIT_PREEMPTED. After SIGTERM the actors may already be gone
(SLURM signals every job step at once); then the run keeps its last periodic
checkpoint and says so. A second signal while the checkpoint is written is
reported and otherwise ignored: the checkpoint is written under a temporary
name and renamed when complete, so even SIGKILL cannot leave a half-written one.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType

# Signals a run may take as its preemption warning (catchable, not already used by Ray or the terminal).
STOP_SIGNALS = {"SIGUSR1", "SIGUSR2", "SIGTERM", "SIGHUP", "SIGXCPU", "SIGALRM"}
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later"; gradus.sbatch requeues the job on it


class Preempted(Exception):
    """The run stopped on a signal; the message says which checkpoint a resume continues from."""


class StartupStopped(Exception):
    """A stop signal arrived before the first step: start-up is abandoned."""


class StopSignals:
    """While active, the warning signal and SIGTERM record a stop request instead
    of killing the process (handlers can only be set from the main thread; from
    any other thread this does nothing). Until `started()` there is no step to
    finish: a signal then raises StartupStopped in the main thread at once, so
    start-up ends promptly and its cleanup (Ray) runs."""

    def __init__(self, warning: str) -> None:
        names = [warning] if warning else []
        self.signals = [getattr(signal, name) for name in dict.fromkeys([*names, "SIGTERM"])]
        self.requested: str | None = None
        self.previous: dict[int, object] = {}
        self.starting = True

    def started(self) -> None:
        """The first step begins: from now on a signal lets the step in flight finish."""
        self.starting = False

    def __enter__(self) -> StopSignals:
        self.arm()
        return self

    def arm(self) -> None:
        """(Re)install the handlers; call again after ray.init, which puts its own
        on SIGTERM (exit at once, and a C++ handler that aborts)."""
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self.previous.setdefault(s, signal.signal(s, self._handle))

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            _say(f"{name} while stopping on {self.requested}: already stopping, the checkpoint is written atomically")
            return
        self.requested = name
        if self.starting:
            _say(f"{name} during start-up: stopping (no step has run), shutting down Ray")
            raise StartupStopped(name)
        _say(f"{name}: finishing the step in flight, then checkpointing it and exiting with code {EXIT_PREEMPTED}")


def _say(message: str) -> None:
    """One line to stderr without Python's buffered streams (not reentrant: a handler may interrupt a print)."""
    os.write(sys.stderr.fileno(), f"gradus: {message}\n".encode())
