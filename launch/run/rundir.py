"""The run directory: created (or refused) before anything expensive starts,
checked for checkpoint space, and trimmed back to a checkpoint on resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from gradus.launch.config.schema import Config, to_dict
from gradus.launch.errors import GradusError
from gradus.launch.run import checkpoint_dirs

START_EVAL = "eval_start.json"  # held-out metrics of the initial policy (eval.at_start), outside metrics.jsonl


def check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory (or its checkpoints/) that is a file or cannot be
    written, before anything is changed or started."""
    for path in (run_dir, checkpoint_dirs.checkpoint_root(run_dir)):
        if path.exists() and not path.is_dir():
            raise GradusError(f"run.run_dir: {path} is a file, not a directory; choose another run.run_dir=...")
    existing = next((p for p in [run_dir, *run_dir.parents] if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GradusError(
            f"run.run_dir {run_dir} is not writable ({existing} is read-only); choose another run.run_dir=..."
        )


def prepare_run_dir(cfg: Config, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the run directory before anything expensive starts; refuse to
    clobber an earlier run unless asked. --overwrite sets the earlier run's
    checkpoints aside where no resume reads them; half-written checkpoints of a
    killed save are removed."""
    run_dir = Path(cfg.run.run_dir)
    check_run_dir(run_dir)
    earlier = (run_dir / "metrics.jsonl").exists() or bool(checkpoint_dirs.complete(run_dir))
    if earlier and not resume:
        if not overwrite:
            raise GradusError(
                f"run.run_dir {run_dir} already holds a run; pass --overwrite (its checkpoints are set aside), "
                "--resume, or choose another run.run_dir=..."
            )
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        (run_dir / START_EVAL).unlink(missing_ok=True)
        aside = checkpoint_dirs.set_aside(run_dir)
        if aside is not None:
            print(
                f"gradus: --overwrite: the earlier run's checkpoints moved to {aside} (never resumed from)", flush=True
            )
    for leftover in checkpoint_dirs.remove_leftovers(run_dir):
        print(f"gradus: removed {leftover}, a checkpoint a killed save left half-written", flush=True)
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
    """Drop lines of steps after `last_step` (logged by a run killed before its
    next checkpoint), and a torn line a kill left mid-write (said once)."""
    if not path.exists():
        return
    kept = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            print(f"gradus: {path} line {number} is torn (a run killed while writing it); dropped", flush=True)
            continue
        if step <= last_step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))
