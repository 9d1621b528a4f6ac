"""A grid's run in a process of its own (launch/experiments/isolated.py), with
stand-in children: its error line, a crash and a stop signal reach the grid."""

import os
import signal
import sys
import threading
import time

import pytest

from gradus.launch.errors import GradusError
from gradus.launch.experiments.isolated import run_isolated, train_command
from gradus.launch.run.preempt import Preempted


def _child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_runs_error_line_and_a_crash_fail_that_run_only():
    failing = "import sys; print('gradus: error: data.distributions.0: no rows', file=sys.stderr); sys.exit(2)"
    with pytest.raises(GradusError, match=r"^data.distributions.0: no rows$"):
        run_isolated(_child(failing), [])
    with pytest.raises(GradusError, match="killed by SIGSEGV; its newest checkpoint is kept"):
        run_isolated(_child("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"), [])
    run_isolated(_child("print('fine')"), [])
    start = time.monotonic()  # a process the run left behind (a daemon, say) keeps its stderr open: not waited for
    with pytest.raises(GradusError, match="^left one behind$"):
        run_isolated(
            _child(
                "import subprocess, sys; subprocess.Popen(['sleep', '60']); "
                "print('gradus: error: left one behind', file=sys.stderr); sys.exit(2)"
            ),
            [],
        )
    assert time.monotonic() - start < 30


def test_a_stop_signal_to_the_grid_reaches_the_run(tmp_path):
    ready = tmp_path / "ready"
    child = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda *_: sys.exit(75))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )

    def signal_when_ready() -> None:
        while not ready.exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)  # to this process (the grid's); the handler passes it on

    threading.Thread(target=signal_when_ready, daemon=True).start()
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Preempted):
        run_isolated(_child(child), ["SIGUSR1"])
    assert signal.getsignal(signal.SIGUSR1) == before  # the grid's own handlers are back


def test_the_command_is_gradus_train_with_the_cells_overrides(tmp_path):
    config = tmp_path / "default.yaml"
    assert train_command(config, ["run.seed=1"], None)[1:] == [
        "-m", "gradus.launch.cli", "train", str(config), "run.seed=1", "--overwrite"
    ]  # fmt: skip
    assert train_command(config, [], "latest")[-2:] == ["--resume", "latest"]


def test_a_stop_signal_stops_the_grid_even_when_the_run_dies_of_it(tmp_path):
    """A run that gets SIGTERM before it installs its handlers (during its
    imports) dies of it: the grid must stop too, not go on with the next run."""
    ready = tmp_path / "ready"

    def signal_when_ready() -> None:
        while not ready.exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signal_when_ready, daemon=True).start()
    child = f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    with pytest.raises(Preempted, match="the grid got SIGTERM and stopped its run; re-running resumes"):
        run_isolated(_child(child), [])
