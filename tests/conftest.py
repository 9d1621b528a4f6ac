import os
import sys
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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
