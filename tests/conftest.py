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
# On from here to the interpreter's very end (pytest's own faulthandler stops at
# unconfigure): a crash while Ray, torch or vLLM tear down after the last test
# prints every thread's stack instead of a bare exit status 139.
faulthandler.enable()


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
