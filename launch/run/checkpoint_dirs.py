"""Checkpoint directories: written under a temporary name and renamed when
complete, so a crash mid-save never leaves one that looks finished; the newest
`keep` are kept.

<run_dir>/checkpoints/step-000012/
    trainer/     consolidated weights + optimizer state (any world size / ZeRO
                 stage loads it: trainer/engine_checkpoint.py), LR schedule, per-rank RNG
    state.json   step, policy version, curriculum scheduler (bandit, cursors,
                 RNG) as of the last batch generated, wandb run id
    pending.pkl  async rollout only, in a checkpoint taken on a stop signal:
                 batches already generated for the next steps (their
                 generating weights are gone), trained first on resume
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

from gradus.launch.errors import GradusError

PREFIX = "step-"
PENDING = "pending.pkl"


def checkpoint_due(every: int, steps: int, step: int) -> bool:
    """Whether step `step` (0-based) ends with a checkpoint: every `every` steps
    and the last of `steps` (never with every = 0)."""
    return every > 0 and ((step + 1) % every == 0 or step + 1 == steps)


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def staging_dir(run_dir: Path, step: int) -> Path:
    path = checkpoint_root(run_dir) / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def commit(staging: Path, state: dict[str, Any], keep: int, pending: dict[int, dict] | None = None) -> Path:
    """Write state.json last, then rename: only complete checkpoints carry the final name."""
    if pending:
        (staging / PENDING).write_bytes(pickle.dumps(pending))
    (staging / "state.json").write_text(json.dumps(state))
    final = staging.parent / staging.name.removeprefix(".tmp-")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in complete(staging.parent.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = checkpoint_root(run_dir)
    found = [p for p in root.glob(f"{PREFIX}*") if (p / "state.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def resolve_auto(run_dir: Path, overwrite: bool) -> tuple[str | None, bool]:
    """`--resume auto` -> (resume, overwrite): the newest checkpoint if there is one,
    else a fresh start that replaces a run which never reached a checkpoint."""
    found = bool(complete(run_dir))
    print(
        "gradus: --resume auto: "
        f"{'continuing from the newest checkpoint' if found else 'no checkpoint in run.run_dir, starting at step 1'}",
        flush=True,
    )
    return ("latest", overwrite) if found else (None, True)


def layout_change(saved: dict[str, int], world_size: int, zero_stage: int) -> str:
    """What a resume on another trainer layout carries over exactly, and what it cannot."""
    return (
        f"gradus: the checkpoint was saved with trainer.world_size={saved['world_size']} "
        f"zero_stage={saved['zero_stage']}, resuming with "
        f"world_size={world_size} zero_stage={zero_stage}: weights, optimizer state, LR schedule, curriculum, "
        "data cursors and step carry over exactly; per-rank RNG and the order of gradient reductions cannot, "
        "so later steps match an uninterrupted run up to float rounding"
    )


def resolve(run_dir: Path, resume: str) -> Path:
    """`latest` (or `auto`) -> the run dir's newest checkpoint; otherwise a checkpoint path."""
    if resume in ("latest", "auto"):
        found = complete(run_dir)
        if not found:
            raise GradusError(
                f"--resume: {checkpoint_root(run_dir)} holds no complete checkpoint; "
                "train without --resume or set run.checkpoint_every"
            )
        return found[-1]
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise GradusError(
            f"--resume {path}: not a complete checkpoint (no state.json); pass a checkpoints/step-NNNNNN directory"
        )
    return path


def load_state(path: Path) -> dict[str, Any]:
    return json.loads((path / "state.json").read_text())


def load_pending(path: Path) -> dict[int, dict]:
    """Batches a stop-signal checkpoint carried for the steps after it (our own file)."""
    return pickle.loads((path / PENDING).read_bytes()) if (path / PENDING).is_file() else {}


def describe_latest(run_dir: Path) -> str:
    """Which checkpoint a resume continues from, in words."""
    found = complete(run_dir)
    return (
        f"the last periodic checkpoint {found[-1]} is what --resume auto continues from"
        if found
        else "no checkpoint: --resume auto starts again"
    )
