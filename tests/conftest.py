import faulthandler
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # tests name configs/ relative to the repository root
os.environ.setdefault("WANDB_SILENT", "true")
# Throwaway local clusters. Ray reads its auth mode once per process, so every
# cluster this process joins (ray.init here, `ray start` in the two-node tests)
# must agree; token auth is left to real clusters.
os.environ["RAY_AUTH_MODE"] = "disabled"


_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with pytest's own exit status, skipping the interpreter's teardown.

    This process has loaded torch, DeepSpeed, Ray, wandb and matplotlib; their
    native destructors can crash at exit after every test has passed (CI: exit
    139 after "310 passed"). The verdict is pytest's status, passed on unchanged,
    so a failing test still fails the suite. Runs after pytest's own unconfigure
    (trylast), when its report is written and its faulthandler is off."""
    if not _exit_status:
        return
    faulthandler.enable(all_threads=True)  # a crash in the clean-up below still shows its stacks
    if "ray" in sys.modules:
        import ray

        ray.shutdown()
    if "wandb" in sys.modules:
        import wandb

        wandb.teardown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status[-1])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def own_ray_dir():
    """Ray clusters started by this module's subprocesses keep their files (and so
    their daemons' command lines) under a directory of their own: cleaning up after
    a killed run then stops only those daemons, never another Ray on the machine
    (as `ray stop --force` would, e.g. an ablation running beside the tests)."""
    path = tempfile.mkdtemp(prefix="gr", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = path
    try:
        yield path
    finally:
        stop_own_ray(path)
        os.environ.pop("RAY_TMPDIR") if before is None else os.environ.update(RAY_TMPDIR=before)
        shutil.rmtree(path, ignore_errors=True)


def stop_own_ray(path: str) -> None:
    """SIGKILL the Ray daemons whose files live under `path` (own_ray_dir)."""
    subprocess.run(["pkill", "-9", "-f", path], capture_output=True)
