"""The outer loop of `gradus train`: steps, periodic checkpoints, restarts
after a dead worker, and stopping on a signal."""

from __future__ import annotations

import functools
from pathlib import Path

from gradus.launch.config.schema import Config
from gradus.launch.errors import GradusError
from gradus.launch.run import checkpoint_dirs as checkpoint
from gradus.launch.run.driver import Run
from gradus.launch.run.faults import WORKER_DIED
from gradus.launch.run.prefetch import Prefetcher
from gradus.launch.run.preempt import Preempted, StartupStopped, StopSignals


def train(cfg: Config, overwrite: bool = False, resume: str | None = None) -> Path:
    """Run to the last step. If a worker dies, start again from the newest
    checkpoint (from scratch if there is none), up to run.max_restarts times. On
    a stop signal, checkpoint the step in flight and raise Preempted
    (launch/run/preempt.py). resume="auto": resume if run.run_dir holds a checkpoint."""
    if resume == "auto":
        resume, overwrite = checkpoint.resolve_auto(Path(cfg.run.run_dir), overwrite)
    due = functools.partial(checkpoint.checkpoint_due, cfg.run.checkpoint_every, cfg.run.steps)
    with StopSignals(cfg.run.preempt_signal) as stop:
        for attempt in range(cfg.run.max_restarts + 1):
            try:
                run = Run(cfg, overwrite if attempt == 0 else True, resume)
            except StartupStopped as err:  # nothing started yet: nothing to clean up
                raise Preempted(f"stopped on {err} during start-up, before any step") from None
            prefetch = None
            try:
                run.start(after_ray_init=stop.arm, ready=stop.started)  # ray.init replaces our handlers
                if cfg.rollout.async_generation:
                    prefetch = Prefetcher(
                        run.produce, due, run.start_step, cfg.run.steps, cfg.rollout.max_staleness, run.pending
                    )
                for step in range(run.start_step, cfg.run.steps):
                    run.step(step, prefetch)
                    requested = stop.requested  # read once: a signal arriving now is handled after the next step
                    if due(step) or requested:
                        path = run.save(step, prefetch.pending() if prefetch else {})
                    if requested:
                        raise Preempted(
                            f"stopped on {requested} after step {step + 1}; checkpoint {path}; "
                            "continue with --resume auto"
                        )
                    if prefetch:
                        prefetch.finish(step)
                run.finish()
                return run.run_dir
            except Preempted:
                raise
            except StartupStopped as err:
                raise Preempted(
                    f"stopped on {err} during start-up, before any step; {checkpoint.describe_latest(run.run_dir)}"
                ) from None
            except Exception as err:
                if stop.requested:  # SIGTERM reached the workers first
                    raise Preempted(
                        f"stopped on {stop.requested}; the workers were gone ({type(err).__name__}) "
                        "before the step finished; "
                        f"{checkpoint.describe_latest(run.run_dir)}"
                    ) from None
                if not isinstance(err, WORKER_DIED):
                    raise
                if attempt == cfg.run.max_restarts:
                    raise GradusError(
                        (
                            f"a worker died and run.max_restarts={cfg.run.max_restarts} restarts are used up: {err}"
                        ).splitlines()[0]
                    ) from None
                resume = "latest" if checkpoint.newest_valid(run.run_dir) else None
                why = (str(err).splitlines() or [""])[0][:300]
                print(
                    f"gradus: a worker died ({type(err).__name__}: {why}); restarting from {resume or 'scratch'} "
                    f"({attempt + 1}/{cfg.run.max_restarts})",
                    flush=True,
                )
            finally:
                if prefetch:
                    prefetch.stop()
                run.close()
    return run.run_dir
