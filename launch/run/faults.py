"""How the driver learns that a worker is gone or hung. The driver restarts the
run from its newest checkpoint, the rollout group replaces the worker and the
scheduler client restarts the scheduler actor: whichever way the process died,
and when a call to it outlived the watchdog's deadline (then it is killed first)."""

from __future__ import annotations

from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, remove_placement_group
from ray.exceptions import GetTimeoutError, NodeDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

from gradus.launch.errors import GradusError

STARTUP_TIMEOUT_S = 1800.0  # until the first step has finished: model loading, compiling, a cold cache
FLOOR_TIMEOUT_S = 300.0  # no call is given less than this
STEP_FACTOR = 10.0  # ... nor less than this many times the longest step so far


def init_failure(err: BaseException) -> str | None:
    """What an actor's __init__ raised (its frame and exception line), or None
    for an actor that died any other way: such an error repeats on every
    restart, so it is reported, not retried."""
    if not (isinstance(err, RayActorError) and getattr(err, "actor_init_failed", False)):
        return None
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    frames = [line for line in lines if line.startswith("File ")]
    return lines[-1] + (f" ({frames[-1]})" if frames else "") if lines else type(err).__name__


class HungWorker(Exception):
    """A call to an actor did not return within the watchdog's deadline; the actor was killed."""


# An actor died (crash, kill, lost node: RayActorError), the process running a
# call was killed by Ray's memory monitor (OutOfMemoryError) or crashed with it,
# or a call hung past the watchdog (HungWorker).
WORKER_DIED = (RayActorError, OutOfMemoryError, WorkerCrashedError, NodeDiedError, HungWorker)


class Watchdog:
    """The deadline of every driver-side wait on an actor call (run.call_timeout_s).
    0 sizes it from the run's own pace: STARTUP_TIMEOUT_S until a step has
    finished, then max(FLOOR_TIMEOUT_S, STEP_FACTOR x the longest step so far).
    A call past it is a dead worker: its actors are killed and HungWorker raised,
    which takes the existing restart paths."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.fixed = seconds
        self.longest_step = 0.0

    def observe(self, step_seconds: float) -> None:
        self.longest_step = max(self.longest_step, step_seconds)

    @property
    def seconds(self) -> float:
        if self.fixed > 0:
            return self.fixed
        return STARTUP_TIMEOUT_S if not self.longest_step else max(FLOOR_TIMEOUT_S, STEP_FACTOR * self.longest_step)

    def get(self, refs: Any, what: str, actors: list[Any] | None = None, slow: bool = False) -> Any:
        """ray.get under the deadline; past it, kill `actors` and raise HungWorker naming
        `what`. `slow`: work that steps do not measure (checkpoints, final saves,
        held-out evaluation) gets at least the start-up allowance. An actor whose
        __init__ raised is a GradusError naming the exception (not a death to retry)."""
        seconds = max(self.seconds, STARTUP_TIMEOUT_S) if slow and not self.fixed else self.seconds
        try:
            return ray.get(refs, timeout=seconds)
        except RayActorError as err:
            cause = init_failure(err)
            if cause is None:
                raise
            raise GradusError(f"{what}: the actor could not start, its __init__ raised {cause}") from None
        except GetTimeoutError:
            for actor in actors or []:
                ray.kill(actor)
            raise HungWorker(
                f"{what} did not answer within {seconds:.0f} s (run.call_timeout_s); treated as dead"
            ) from None


PLACEMENT_NOTICE_S = 60.0  # a placement still pending after this is said on the console


def placement_ready(
    placement: PlacementGroup, watchdog: Watchdog, what: str, notice_s: float = PLACEMENT_NOTICE_S
) -> None:
    """Wait for a placement group's bundles, under the watchdog: a cluster that
    cannot hold them is a clear error, not a silent hang. The preflight compares
    with the nodes' totals, so a busy shared cluster passes it and then waits here
    for others' work to end: after `notice_s` the wait is said, with what is free."""
    ready = placement.ready()
    if not ray.wait([ready], timeout=notice_s)[0]:
        print(
            f"gradus: Ray has not placed {what} after {notice_s:.0f} s (bundles {placement.bundle_specs}; free now "
            f"{ray.available_resources()}); waiting up to {watchdog.seconds:.0f} s more (run.call_timeout_s)",
            flush=True,
        )
    try:
        watchdog.get(ready, f"placement of {what}")
    except HungWorker:
        remove_placement_group(placement)
        raise GradusError(
            f"Ray could not place {what} within {watchdog.seconds:.0f} s: the cluster lacks the CPUs/GPUs or custom "
            f"resources they ask for (bundles {placement.bundle_specs}, cluster {ray.cluster_resources()}); "
            "lower rollout.num_workers / trainer.world_size, set cluster.colocate=true, or add nodes"
        ) from None
