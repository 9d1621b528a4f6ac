"""The run directory: created (or refused) before anything expensive starts,
checked for checkpoint space, and trimmed back to a checkpoint on resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from gradus.launch.config.schema import Config, to_dict
from gradus.launch.errors import GradusError

START_EVAL = "eval_start.json"  # held-out metrics of the initial policy (eval.at_start), outside metrics.jsonl


def prepare_run_dir(cfg: Config, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the run directory before anything expensive starts; refuse to
    clobber an earlier run unless asked."""
    run_dir = Path(cfg.run.run_dir)
    if (run_dir / "metrics.jsonl").exists() and not resume:
        if not overwrite:
            raise GradusError(
                f"run.run_dir {run_dir} already holds a run; pass --overwrite or choose another run.run_dir=..."
            )
        (run_dir / "metrics.jsonl").unlink()
        (run_dir / START_EVAL).unlink(missing_ok=True)
    (run_dir / "done.json").unlink(missing_ok=True)  # complete again only when this run finishes
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    except OSError as err:
        raise GradusError(f"run.run_dir {run_dir} is not writable: {err.strerror}") from None
    return run_dir


def check_disk(cfg: Config, run_dir: Path, model_path: Path) -> None:
    """Fail before training if the checkpoints cannot fit: each holds the weights
    and two Adam moments (~3x the model files); one more is written before the
    oldest is removed."""
    if cfg.run.checkpoint_every <= 0:
        return
    model_bytes = sum(f.stat().st_size for f in model_path.glob("*.safetensors")) or sum(
        f.stat().st_size for f in model_path.glob("*.bin")
    )
    need = 3 * model_bytes * (cfg.run.keep_checkpoints + 1)
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise GradusError(
            f"run.run_dir {run_dir}: {free / 2**30:.1f} GiB free, checkpoints need about {need / 2**30:.1f} GiB; "
            "free space, lower run.keep_checkpoints, set run.checkpoint_every=0, or choose another run.run_dir"
        )


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines of steps after `last_step` (logged by a run killed before its next checkpoint)."""
    if path.exists():
        kept = [
            line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step
        ]
        path.write_text("".join(line + "\n" for line in kept))
