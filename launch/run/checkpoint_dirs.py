"""Checkpoint directories: written under a temporary name, every file and the
directory fsync'd, a manifest (names, sizes, SHA-256) written last, then
renamed; so a crash, a full disk or a lost node never leaves one that looks
finished, and a resume verifies a checkpoint before anything starts. The newest
`keep` are kept. Everything in a checkpoint is JSON or safetensors: loading
one runs no code.

<run_dir>/checkpoints/step-000012/
    trainer/       consolidated weights + optimizer state (any world size / ZeRO
                   stage loads it: trainer/engine_checkpoint.py), LR schedule, per-rank RNG
    state.json     step, policy version, curriculum scheduler (bandit, cursors,
                   RNG) as of the last batch generated, wandb run id, the run's config
    pending.json   async rollout only, in a checkpoint taken on a stop signal:
                   batches already generated for the next steps (their
                   generating weights are gone), trained first on resume
    manifest.json  every other file's size and SHA-256, written last
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from gradus.launch.errors import GradusError

PREFIX = "step-"
PENDING = "pending.json"
MANIFEST = "manifest.json"


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


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Remove half-written checkpoints (`.tmp-*`) a killed save left behind; returns them."""
    root = checkpoint_root(run_dir)
    leftovers = sorted(root.glob(".tmp-*")) if root.is_dir() else []
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def commit(staging: Path, state: dict[str, Any], keep: int, pending: dict[str, Any] | None = None) -> Path:
    """Write state.json and pending.json, fsync every file and directory, write the
    manifest last, then rename: only complete checkpoints carry the final name.
    A failed write (a full disk) removes the staging directory, keeps every
    earlier checkpoint and stops with one line."""
    try:
        if pending:
            (staging / PENDING).write_text(json.dumps(pending))
        (staging / "state.json").write_text(json.dumps(state))
        files = _files(staging)
        manifest = {str(p.relative_to(staging)): {"bytes": p.stat().st_size, "sha256": _digest(p)} for p in files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for path in [*files, staging / MANIFEST, *{p.parent for p in files}, staging]:
            _fsync(path)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise GradusError(
            f"writing checkpoint {staging.name.removeprefix('.tmp-')} failed ({err.strerror or err}); "
            f"earlier checkpoints in {staging.parent} are intact: free space and continue with --resume auto"
        ) from None
    final = staging.parent / staging.name.removeprefix(".tmp-")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    _fsync(staging.parent)
    for old in complete(staging.parent.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete(run_dir: Path) -> list[Path]:
    """Finished checkpoints (renamed into place), oldest first; `broken` says
    whether each one's files still match its manifest."""
    root = checkpoint_root(run_dir)
    found = [p for p in root.glob(f"{PREFIX}*") if (p / "state.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def broken(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be used, or None if it is sound: every
    file its manifest lists, with that size and SHA-256, and a readable state.json.
    (A checkpoint from before manifests is checked by its state.json alone.)"""
    manifest_path = path / MANIFEST
    try:
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            for name, entry in manifest.items():
                file = path / name
                if not file.is_file():
                    return f"{name} is missing"
                if file.stat().st_size != entry["bytes"]:
                    return f"{name} has {file.stat().st_size} bytes, the manifest says {entry['bytes']}"
                if _digest(file) != entry["sha256"]:
                    return f"{name} does not match its checksum"
        state = json.loads((path / "state.json").read_text())
        if not isinstance(state, dict) or "step" not in state:
            return "state.json holds no step"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable ({type(err).__name__}: {err})".splitlines()[0]
    return None


def newest_valid(run_dir: Path) -> Path | None:
    """The newest checkpoint that passes `broken`; each newer broken one is named."""
    for path in reversed(complete(run_dir)):
        problem = broken(path)
        if problem is None:
            return path
        print(f"gradus: checkpoint {path} is broken ({problem}); trying the one before it", flush=True)
    return None


def resolve_auto(run_dir: Path, overwrite: bool) -> tuple[str | None, bool]:
    """`--resume auto` -> (resume, overwrite): the newest checkpoint if there is one,
    else a fresh start that replaces a run which never reached a checkpoint."""
    found = newest_valid(run_dir) is not None
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
    """`latest` (or `auto`) -> the run dir's newest sound checkpoint; otherwise a
    checkpoint path, which must be sound. Checked before the run directory is
    touched or anything starts."""
    if resume in ("latest", "auto"):
        found = newest_valid(run_dir)
        if found is None:
            raise GradusError(
                f"--resume: {checkpoint_root(run_dir)} holds no complete checkpoint; "
                "train without --resume or set run.checkpoint_every"
            )
        return found
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise GradusError(
            f"--resume {path}: not a complete checkpoint (no state.json); pass a checkpoints/step-NNNNNN directory "
            "or --resume alone for the newest"
        )
    problem = broken(path)
    if problem is not None:
        raise GradusError(f"--resume {path}: the checkpoint is broken ({problem}); pass an earlier checkpoint")
    return path


def load_state(path: Path) -> dict[str, Any]:
    return json.loads((path / "state.json").read_text())


def load_pending(path: Path) -> dict[str, Any]:
    """Batches a stop-signal checkpoint carried for the steps after it (JSON, by step)."""
    return json.loads((path / PENDING).read_text()) if (path / PENDING).is_file() else {}


# What a resume may change, by config key prefix: where the run executes and how
# fast (layout, resources, engines, exact speed-ups), when it stops and what it
# logs, and the optimizer settings it then applies explicitly (APPLIED). Anything
# else changes what the checkpoint's state means and is refused.
RESUMABLE = (
    "run.steps",
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.max_restarts",
    "run.save_final",
    "run.preempt_signal",
    "run.run_dir",
    "eval.",
    "wandb.",
    "cluster.",
    "sync.",
    "rollout.num_workers",
    "rollout.threads",
    "rollout.cpus_per_worker",
    "rollout.kv_cache_gib",
    "rollout.enforce_eager",
    "rollout.gpu_memory_utilization",
    "rollout.tensor_parallel_size",
    "rollout.resources",
    "rollout.max_model_len",
    "trainer.world_size",
    "trainer.zero_stage",
    "trainer.zero_init",
    "trainer.threads",
    "trainer.cpus_per_rank",
    "trainer.resources",
    "trainer.max_tokens_per_micro_batch",
    "trainer.gradient_checkpointing",
    "trainer.offload.",
    "trainer.skip_uninformative",
    "trainer.share_prompts",
    "trainer.grad_clip",
    "trainer.lr",
    "trainer.weight_decay",
)
APPLIED = ("trainer.lr", "trainer.weight_decay")  # the checkpoint's optimizer holds its own: replaced, said once


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree and not prefix.endswith(("params", "prompts", "budget", "resources")):
        return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def config_changes(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, this run's value) for every setting that differs;
    refuses (GradusError, keys named) a change a resume cannot make. A checkpoint
    from before configs were stored is not compared."""
    if saved is None:
        return []
    old, new = _flatten(saved), _flatten(current)
    changed = [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    refused = [c for c in changed if not c[0].startswith(RESUMABLE)]
    if refused:
        listing = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in refused)
        raise GradusError(
            f"--resume: the checkpoint was trained with other settings that a resume cannot change ({listing}); "
            "resume with the checkpoint's values (the config in its state.json) or start a new run.run_dir"
        )
    return changed


def set_aside(run_dir: Path, after: int | None = None) -> Path | None:
    """Move checkpoints where no resume looks (`<run_dir>/overwritten-N/checkpoints`):
    all of them (--overwrite), or with `after` those of later steps than a resume's
    (another line of the run); returns where, None if there were none."""
    root = checkpoint_root(run_dir)
    moving = [p for p in complete(run_dir) if after is not None and int(p.name.removeprefix(PREFIX)) > after]
    if not root.is_dir() or (after is not None and not moving):
        return None
    n = 1
    while (run_dir / f"overwritten-{n}").exists():
        n += 1
    target = run_dir / f"overwritten-{n}" / "checkpoints"
    target.parent.mkdir(parents=True)
    if after is None:
        root.rename(target)
    else:
        target.mkdir()
        for path in moving:
            path.rename(target / path.name)
    return target


def describe_latest(run_dir: Path) -> str:
    """Which checkpoint a resume continues from, in words."""
    found = complete(run_dir)
    return (
        f"the last periodic checkpoint {found[-1]} is what --resume auto continues from"
        if found
        else "no checkpoint: --resume auto starts again"
    )
