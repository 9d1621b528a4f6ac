"""Failures of the user's code inside the rollout workers (a reward file that
raises or hangs, a verifier bug) made visible: the first message of each
distinct failure reaches the driver's console and <run_dir>/errors.log with its
distribution and row, and a step where too many verifications failed stops the
run instead of training on zeros."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from gradus.launch.errors import GradusError
from gradus.rollout.records import Group

ERRORS_LOG = "errors.log"


class UserErrors:
    def __init__(self, run_dir: Path, max_frac: float) -> None:
        self.path, self.max_frac = run_dir / ERRORS_LOG, max_frac
        self.seen: set[str] = set()

    def check(self, step: int, groups: Sequence[Group]) -> None:
        """Report this step's new failure messages; raise GradusError if the share of
        failed verifications is above reward.max_error_frac."""
        samples = [(g, s) for g in groups for s in g.samples]
        failed = [(g, s) for g, s in samples if s.verify_error or s.verify_timeout]
        for g, s in failed:
            message = s.verify_message or ("verifier timed out" if s.verify_timeout else "verifier failed")
            if message in self.seen:
                continue
            self.seen.add(message)
            line = f"step {step + 1}: distribution {g.distribution} row {g.item.row_id}: {message}"
            print(f"gradus: {line} (scored 0; repeats are counted in verify/errors and verify/timeouts)", flush=True)
            with self.path.open("a") as f:
                f.write(line + "\n")
        if samples and len(failed) / len(samples) > self.max_frac:
            g, s = failed[0]
            raise GradusError(
                f"step {step + 1}: {len(failed)} of {len(samples)} verifications failed, more than "
                f"reward.max_error_frac={self.max_frac:g} (first: distribution {g.distribution} row {g.item.row_id}: "
                f"{s.verify_message}); fix the reward function or raise reward.max_error_frac (details in {self.path})"
            )
