"""The curriculum scheduler actor behind a handle that survives its death.

The driver keeps the scheduler's state as of the last fully produced step (a
small dict: bandit, data cursors, RNG). If the actor dies, a new one starts
from that state and the step being produced is produced again; sampling seeds
come from (seed, step, round, prompt), so it is the same step as before. Calls
from a produce() that began before the restart raise SchedulerLost (their
partial updates went down with the old actor), so two threads (async rollout)
never mix states."""

from __future__ import annotations

import threading
from typing import Any

import ray

from gradus.curriculum.items import Item
from gradus.curriculum.scheduler import remote_scheduler
from gradus.launch.run.faults import WORKER_DIED, Watchdog


class SchedulerLost(Exception):
    """The scheduler actor was replaced since this produce() began; produce again."""


class SchedulerClient:
    def __init__(self, args: dict[str, Any], max_restarts: int = 3, watchdog: Watchdog | None = None) -> None:
        self.args, self.max_restarts = args, max_restarts
        self.watchdog = watchdog or Watchdog()
        self.actor = remote_scheduler(**args)
        self.epoch = 0  # bumped by every restart
        self.restarts = 0
        self.snapshot: dict[str, Any] | None = None  # state after the last produced step; None: the initial state
        self.lock = threading.Lock()

    # One method per scheduler call (CurriculumScheduler's meaning). `epoch`, from the
    # start of a produce(), marks a call that changes the scheduler's state.

    def report(self, step: int, epoch: int | None = None) -> dict[str, Any]:
        return self._call("report", step, epoch=epoch)

    def row_stats(self, epoch: int | None = None) -> dict[str, dict[str, float]]:
        return self._call("row_stats", epoch=epoch)

    def next_batch(self, step: int, n: int, epoch: int | None = None) -> list[Item]:
        return self._call("next_batch", step, n, epoch=epoch)

    def group_sizes(self, items: list[Item], base: int, low: int, high: int, epoch: int | None = None) -> list[int]:
        return self._call("group_sizes", items, base, low, high, epoch=epoch)

    def keep(self, groups: list[dict[str, list]], epoch: int | None = None) -> list[bool]:
        return self._call("keep", groups, epoch=epoch)

    def observe(self, step: int, signals: dict[str, list[float]], epoch: int | None = None) -> None:
        self._call("observe", step, signals, epoch=epoch)

    def observe_rows(self, results: list[dict[str, Any]], epoch: int | None = None) -> None:
        self._call("observe_rows", results, epoch=epoch)

    def state_dict(self, epoch: int | None = None) -> dict[str, Any]:
        return self._call("state_dict", epoch=epoch)

    def pop_overhead(self) -> float:
        return self._call("pop_overhead")

    def eval_rows(self) -> dict[str, list[Item]]:
        return self._call("eval_rows")

    def _call(self, method: str, *args: Any, epoch: int | None = None) -> Any:
        """`method(*args)` on the actor. With `epoch` (from the start of a produce())
        raise SchedulerLost if the actor was replaced since; without, a read-only
        call, retried on the replacement."""
        while True:
            with self.lock:
                actor, current = self.actor, self.epoch
            if epoch is not None and epoch != current:
                raise SchedulerLost
            try:
                return self.watchdog.get(getattr(actor, method).remote(*args), f"scheduler ({method})", [actor])
            except WORKER_DIED:
                if not self._restart(current):
                    raise
                if epoch is not None:
                    raise SchedulerLost from None

    def commit(self, epoch: int, state: dict[str, Any]) -> bool:
        """Record the state after a produced step, unless the actor was replaced meanwhile."""
        with self.lock:
            if epoch != self.epoch:
                return False
            self.snapshot = state
            return True

    def load(self, state: dict[str, Any]) -> None:
        """Set the actor's state (a checkpoint's) and remember it as the restart point."""
        self._call("load_state_dict", state)
        self.snapshot = state

    def _restart(self, dead_epoch: int) -> bool:
        """Replace the actor that died in `dead_epoch` (once, whichever thread sees it
        first); False once max_restarts are used up (the run then restarts from its checkpoint)."""
        with self.lock:
            if dead_epoch != self.epoch:
                return True
            if self.restarts == self.max_restarts:
                return False
            ray.kill(self.actor)
            self.actor = remote_scheduler(**self.args)
            if self.snapshot is not None:
                self.watchdog.get(self.actor.load_state_dict.remote(self.snapshot), "scheduler (load_state_dict)")
            self.epoch += 1
            self.restarts += 1
        print(
            "gradus: the curriculum scheduler actor died; restarted from the state after the last produced step "
            f"({self.restarts}/{self.max_restarts})",
            flush=True,
        )
        return True

    def kill(self) -> None:
        ray.kill(self.actor)
