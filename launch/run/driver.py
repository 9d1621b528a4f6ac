"""The synchronous step loop: schedule -> generate + score -> advantages ->
curriculum update + filter -> GRPO update -> weight sync -> metrics. `Run`
holds one attempt of a run; loop.py restarts and stops it."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import ray

from gradus.curriculum.bandits import advantage_signals
from gradus.launch.config.schema import Config, to_dict
from gradus.launch.errors import GradusError
from gradus.launch.prepare.model_dirs import resolve_model
from gradus.launch.run import checkpoint_dirs as checkpoint
from gradus.launch.run.assemble import Produced, bf16_on_gpus, eval_items, init_ray, local_scheduler, scheduler_args
from gradus.launch.run.faults import Watchdog
from gradus.launch.run.groups import RolloutGroup, TrainerGroup, node_of
from gradus.launch.run.metrics import (
    MetricsLogger,
    close_step,
    held_out_metrics,
    train_metrics,
    training_batch_metrics,
    write_eval_outcomes,
)
from gradus.launch.run.prefetch import Prefetcher
from gradus.launch.run.resources import check_combinations, engine_settings, model_dtype, plan, preflight
from gradus.launch.run.rundir import START_EVAL, check_disk, prepare_run_dir, truncate_metrics
from gradus.launch.run.scheduler_client import SchedulerClient, SchedulerLost
from gradus.launch.run.screening import completion_seed, draw_seed, screened
from gradus.launch.run.user_errors import UserErrors
from gradus.rollout.records import Group
from gradus.trainer.batching import TrainSample, contributes
from gradus.trainer.grpo import batch_advantages
from gradus.trainer.models import check_lora_targets


class Run:
    """One training run; `step` is the whole synchronous step loop body."""

    def __init__(self, cfg: Config, overwrite: bool = False, resume: str | None = None) -> None:
        self.cfg = cfg
        # wall time: this process's, plus earlier segments' (resume)
        self.wall_start, self.wall_before = time.perf_counter(), 0.0
        self.scheduler_args = scheduler_args(cfg)
        local_scheduler(cfg)  # data files and curriculum parameters are checked before Ray starts
        self.model_path = str(resolve_model(cfg.model.path))
        if cfg.trainer.lora is not None:  # read from the model's config on the meta device, before Ray starts
            try:
                check_lora_targets(self.model_path, cfg.trainer.lora.target_modules)
            except ValueError as err:
                raise GradusError(str(err)) from None
        # every resume argument and the checkpoint itself are checked before the run directory is touched
        self.resume_from = checkpoint.resolve(Path(cfg.run.run_dir), resume) if resume else None
        self.changes = []
        if self.resume_from is not None:
            saved = checkpoint.load_state(self.resume_from).get("config")
            self.changes = checkpoint.config_changes(saved, to_dict(cfg))
            # checkpoints after the one resumed from (another line, or broken ones skipped) would be picked by a
            # later restart and count against run.keep_checkpoints: set aside, never resumed from
            newer = checkpoint.set_aside(Path(cfg.run.run_dir), after=checkpoint.load_state(self.resume_from)["step"])
            if newer is not None:
                print(
                    f"gradus: checkpoints after {self.resume_from.name} moved to {newer} (never resumed from)",
                    flush=True,
                )
        self.run_dir = prepare_run_dir(cfg, overwrite, resume=resume is not None)
        check_disk(cfg, self.run_dir, Path(self.model_path))
        self.user_errors = UserErrors(self.run_dir, cfg.reward.max_error_frac)
        self.version = 0
        self.start_step = 0
        self.pending: dict[int, Produced] = {}  # batches a stop-signal checkpoint carried (async)

    def start(
        self, after_ray_init: Callable[[], None] = lambda: None, ready: Callable[[], None] = lambda: None
    ) -> None:
        """Ray (unless joined), the actor groups, weight sync, a checkpoint's state;
        `after_ray_init` runs right after ray.init (signal handlers go back on),
        `ready` once the expensive start-up is over (actors up, weights synced)."""
        cfg = self.cfg
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            init_ray(cfg)
        after_ray_init()
        gpus = ray.cluster_resources().get("GPU", 0)
        self.device = cfg.cluster.device if cfg.cluster.device != "auto" else "cuda" if gpus else "cpu"
        if self.device == "cuda" and not gpus:
            raise GradusError(
                "cluster.device=cuda but the Ray cluster has no GPUs; start nodes with GPUs or set cluster.device=cpu"
            )
        if self.device == "cpu" and "cpu" in (cfg.trainer.offload.optimizer, cfg.trainer.offload.params):
            print(
                "gradus: trainer.offload changes nothing on a CPU-only run "
                "(model and optimizer are in CPU memory already)",
                flush=True,
            )
        self.watchdog = Watchdog(cfg.run.call_timeout_s)
        check_combinations(cfg, self.device)
        placement = plan(cfg, self.device)
        problem = preflight(placement, [n["Resources"] for n in ray.nodes() if n["Alive"]])
        if problem:
            raise GradusError(problem)
        probe = self.device == "cuda" and cfg.model.dtype == "auto"
        self.dtype = model_dtype(cfg, self.device, bf16_on_gpus() if probe else True)
        self.scheduler = SchedulerClient(self.scheduler_args, watchdog=self.watchdog)
        self.trainers = TrainerGroup(
            cfg.trainer.world_size,
            cfg.trainer.threads,
            self.device,
            cfg.trainer.cpus_per_rank,
            cfg.trainer.resources,
            placement.colocated_share if cfg.cluster.colocate else None,
            watchdog=self.watchdog,
        )
        self.rollout = RolloutGroup(
            cfg.rollout.num_workers,
            self.model_path,
            cfg.rollout,
            self.dtype,
            cfg.run.seed,
            dataclasses.asdict(cfg.reward),
            self.device,
            placement,
            engine_settings(cfg, self.device, placement),
            colocate_with=self.trainers if cfg.cluster.colocate else None,
            watchdog=self.watchdog,
        )
        if (
            cfg.cluster.colocate and self.device == "cuda"
        ):  # vLLM sizes its memory from what is free: before the trainers
            self.rollout.ready()
        self.num_params = self.trainers.setup(
            self.model_path, self.dtype, cfg.trainer, cfg.run.seed, cfg.run.steps, norm_len=cfg.rollout.max_tokens
        )
        self.rollout.ready()
        self.rollout.connect(self.trainers, cfg.sync.transport, cfg.sync.bucket_mb)
        self.write_placement()
        ready()  # from here a stop signal lets the first step finish and checkpoints it
        wandb_id = None
        if self.resume_from is not None:
            wandb_id = self.restore(self.resume_from)
        self.logger = MetricsLogger(self.run_dir, cfg.wandb, to_dict(cfg), cfg.run.steps, wandb_id)
        start_eval = self.run_dir / START_EVAL
        if (
            cfg.eval.every and cfg.eval.at_start and self.resume_from is None and not start_eval.exists()
        ):  # the initial policy, once
            start_eval.write_text(json.dumps(self.evaluate(-1)))

    def restore(self, path: Path) -> str | None:
        """Trainer engine, curriculum and counters from a checkpoint; the rollout
        engines get the checkpoint's weights. Returns the wandb run id."""
        state = checkpoint.load_state(path)
        applied = {key.split(".")[-1]: new for key, _, new in self.changes if key in checkpoint.APPLIED}
        saved = self.trainers.load_checkpoint(str(path / "trainer"), applied)
        for key, old, new in self.changes:
            effect = "applied to the restored optimizer" if key in checkpoint.APPLIED else "takes effect from here"
            print(f"gradus: resume changes {key}: {old!r} -> {new!r} ({effect})", flush=True)
        if saved != {"world_size": self.cfg.trainer.world_size, "zero_stage": self.trainers.zero_stage}:
            print(checkpoint.layout_change(saved, self.cfg.trainer.world_size, self.trainers.zero_stage), flush=True)
        self.scheduler.load(state["scheduler"])
        self.pending = {int(step): Produced.from_json(p) for step, p in checkpoint.load_pending(path).items()}
        self.version, self.start_step = state["version"], state["step"] + 1
        self.wall_before = state.get("wall_seconds", 0.0)
        self.rollout.update_weights(self.version)
        truncate_metrics(self.run_dir / "metrics.jsonl", state["step"])
        print(f"gradus: resumed from {path} at step {self.start_step + 1}", flush=True)
        return state.get("wandb_id")

    def save(self, step: int, pending: dict[int, Produced]) -> Path:
        """Checkpoint after `step`. The scheduler state is the one after the last batch
        generated: this step's or, if batches for later steps were generated ahead
        (async), the last of those, which the checkpoint then carries."""
        staging = checkpoint.staging_dir(self.run_dir, step)
        self.trainers.save_checkpoint(str(staging / "trainer"))
        state = {
            "step": step,
            "version": self.version,
            "scheduler": pending[max(pending)].scheduler if pending else self.trained_scheduler,
            "wandb_id": self.logger.run_id,
            "wall_seconds": self.wall_seconds(),
            "config": to_dict(self.cfg),
        }
        carried = {str(s): dataclasses.asdict(p) for s, p in pending.items()}
        return checkpoint.commit(staging, state, self.cfg.run.keep_checkpoints, carried)

    def collect(self, step: int, epoch: int) -> tuple[list[Group], list[bool], dict[str, float]]:
        """Generate until prompts_per_step groups pass the filters or the refill
        rounds run out; the curriculum learns from every generated group."""
        cfg, want = self.cfg, self.cfg.rollout.prompts_per_step
        groups: list[Group] = []
        kept: list[bool] = []
        stats = {"time/generate": 0.0, "groups/rounds": 0}
        for round_ in range(1 + cfg.curriculum.max_refill_rounds):
            need = want - sum(kept)
            if need <= 0:
                break
            items = [
                dataclasses.replace(item, seed=draw_seed(cfg.run.seed, step, round_, i))
                for i, item in enumerate(self.scheduler.next_batch(step, need, epoch=epoch))
            ]
            rule = cfg.rollout.group_rule
            if rule:  # a group size per prompt, within the step's sample budget
                sizes = self.scheduler.group_sizes(items, cfg.rollout.group_size, rule["min"], rule["max"], epoch=epoch)
                items = [dataclasses.replace(item, n=size) for item, size in zip(items, sizes)]
            sampling = {
                "max_tokens": cfg.rollout.max_tokens,
                "temperature": cfg.rollout.temperature,
                "top_p": cfg.rollout.top_p,
                "system_prompt": cfg.data.system_prompt,
                "budget_slack": cfg.rollout.budget_slack,
            }
            if cfg.rollout.screen:
                new, seconds, stopped = screened(
                    lambda batch, n: self.rollout.generate(batch, n=n, **sampling),
                    items,
                    cfg.rollout.group_size,
                    int(cfg.rollout.screen["samples"]),
                    lambda i, r=round_: completion_seed(cfg.run.seed, step, r, i),
                )
                stats["groups/screened_out"] = stats.get("groups/screened_out", 0) + stopped
            else:
                new, seconds = self.rollout.generate(items, n=cfg.rollout.group_size, **sampling)
            if cfg.trainer.kl_coef > 0 and cfg.trainer.kl_in == "reward":
                self.penalise_kl(new)
            kept += self.scheduler.keep(
                [{"correct": [s.correct for s in g.samples], "rewards": g.rewards} for g in new], epoch=epoch
            )
            self.scheduler.observe_rows([g.outcome() for g in new], epoch=epoch)  # per-row outcomes, filtered or not
            groups += new
            stats["time/generate"] += seconds
            stats["groups/rounds"] += 1
        advantages = batch_advantages(
            [g.rewards for g in groups], cfg.trainer.estimator, cfg.trainer.scale_rewards
        )  # every round at once
        for g, adv in zip(groups, advantages):
            for s, a in zip(g.samples, adv):
                s.advantage = a
        self.scheduler.observe(step, advantage_signals([g.distribution for g in groups], advantages), epoch=epoch)
        stats.update(
            {"groups/generated": len(groups), "groups/kept": sum(kept), "groups/dropped": len(groups) - sum(kept)}
        )
        return groups, kept, stats

    def penalise_kl(self, groups: list[Group]) -> None:
        """KL in the reward: reward -= kl_coef * sum over tokens of KL(sampling || reference)."""
        samples = [TrainSample(g.prompt_ids, s.tokens, s.logprobs, advantage=0.0) for g in groups for s in g.samples]
        kls = iter(self.trainers.sequence_kl(samples))
        for g in groups:
            for s in g.samples:
                s.kl = next(kls)
                s.reward -= self.cfg.trainer.kl_coef * s.kl

    def training_batch(self, groups: list[Group], kept: list[bool]) -> list[TrainSample]:
        """Kept groups; if refills ran out, dropped groups pad the batch with zero
        weight so every rank still gets its share. Empty if nothing was kept."""
        want = self.cfg.rollout.prompts_per_step
        chosen = [(g, 1.0) for g, k in zip(groups, kept) if k][:want]
        if not chosen:
            return []
        chosen += [(g, 0.0) for g, k in zip(groups, kept) if not k][: want - len(chosen)]
        return [
            TrainSample(g.prompt_ids, s.tokens, s.logprobs, s.advantage, weight=w, lag=self.version - g.version)
            for g, w in chosen
            for s in g.samples
        ]

    def produce(self, step: int) -> Produced:
        """The generation half of a step: the curriculum's report, then groups
        generated, scored and filtered (the curriculum learns from them here), the
        prompt samplers' statistics of this step, and the scheduler's state after
        it. If the scheduler actor dies meanwhile, it restarts from the state after
        the previous batch and the step is produced again."""
        while True:
            epoch = self.scheduler.epoch
            try:
                report = self.scheduler.report(step, epoch=epoch)
                groups, kept, stats = self.collect(step, epoch)
                for name, after in self.scheduler.row_stats(epoch=epoch).items():
                    report["rows"][name].update(after)
                state = self.scheduler.state_dict(epoch=epoch)
            except SchedulerLost:
                continue
            if self.scheduler.commit(epoch, state):
                return Produced(report, groups, kept, stats, state)

    def step(self, step: int, prefetch: Prefetcher | None = None) -> dict[str, Any]:
        """One step; in async mode its batch was generated ahead by `prefetch`,
        otherwise it is generated here first."""
        start = time.perf_counter()
        produced = prefetch.take(step) if prefetch else self.pending.pop(step, None) or self.produce(step)
        self.trained_scheduler = produced.scheduler
        self.user_errors.check(step, produced.groups)
        metrics = {**produced.stats, "time/wait_generate": time.perf_counter() - start}
        samples = self.training_batch(produced.groups, produced.kept)
        skip = self.cfg.trainer.skip_uninformative
        computed = [s for s in samples if contributes(s, self.trainers.kl_in_loss)] if skip else samples
        metrics.update(training_batch_metrics(samples, computed, self.version))
        if any(s.weight > 0 for s in samples):
            metrics.update(self.update(step, samples, skip, prefetch))
        metrics["time/scheduler"] = self.scheduler.pop_overhead()
        close_step(metrics, produced.groups, produced.kept, produced.report, self.version, self.rollout.restarts, start)
        every = self.cfg.eval.every
        if every and ((step + 1) % every == 0 or step + 1 == self.cfg.run.steps):
            metrics.update(self.evaluate(step))
        self.logger.log(step, metrics)
        self.watchdog.observe(metrics["time/step"])
        return metrics

    def update(
        self, step: int, samples: list[TrainSample], skip: bool, prefetch: Prefetcher | None
    ) -> dict[str, float]:
        """The GRPO update on `samples`, then the new weights into every rollout worker."""
        sleeps = self.cfg.cluster.colocate and self.device == "cuda"
        if sleeps:  # colocated on a GPU: vLLM frees its memory for the update
            self.rollout.sleep()
        t0 = time.perf_counter()
        ranks = self.trainers.train(
            samples, self.cfg.trainer.mini_batches, self.cfg.trainer.max_tokens_per_micro_batch, skip
        )
        metrics = {"time/train": time.perf_counter() - t0}
        if sleeps:  # the trainers' cached CUDA blocks go back before vLLM takes its memory again
            self.trainers.free_cache()
            self.rollout.wake_up()
        if prefetch:
            prefetch.before_sync(step)
        self.version += 1
        t0 = time.perf_counter()
        metrics["time/sync_load"] = self.rollout.update_weights(self.version)
        metrics["time/sync"] = time.perf_counter() - t0
        return {**metrics, **train_metrics(ranks)}

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out accuracy (avg@n) and pass@k per distribution. The scheduler
        only hands out the rows; results never reach the curriculum."""
        cfg, rows = self.cfg, self.scheduler.eval_rows()
        groups, seconds = self.rollout.generate(
            eval_items(rows, cfg.run.seed),
            slow=True,
            n=cfg.eval.samples,
            max_tokens=cfg.rollout.max_tokens,
            temperature=cfg.eval.temperature,
            top_p=1.0,
            system_prompt=cfg.data.system_prompt,
        )
        write_eval_outcomes(self.run_dir, step, groups)
        return {"time/eval": seconds, **held_out_metrics(groups, list(rows), cfg.eval.k)}

    def wall_seconds(self) -> float:
        """Wall time of the run so far, over every resumed segment."""
        return self.wall_before + time.perf_counter() - self.wall_start

    def finish(self) -> None:
        """The trained policy as a Hugging Face directory (<run_dir>/final, for
        `gradus eval` and downstream use) and done.json, which marks the run complete."""
        if self.cfg.run.save_final:
            self.trainers.save_model(str(self.run_dir / "final"), self.model_path)
        start_eval, last = self.run_dir / START_EVAL, self.logger.last_eval
        if start_eval.exists() and last:  # what training changed on the held-out rows
            before = json.loads(start_eval.read_text())
            change = " ".join(
                f"{k[5:-9] or 'all'} {before[k]:.2f}->{last[k]:.2f}"
                for k in sorted(last)
                if k.endswith("accuracy") and k in before
            )
            print(f"gradus: held-out accuracy before -> after training: {change}", flush=True)
        done = {"steps": self.cfg.run.steps, "policy_version": self.version, "wall_seconds": self.wall_seconds()}
        (self.run_dir / "done.json").write_text(json.dumps(done))

    def write_placement(self) -> None:
        """placement.json: the node each actor landed on (what a cluster user checks first)."""
        placement = {
            "device": self.device,
            "transport": self.cfg.sync.transport,
            "colocate": self.cfg.cluster.colocate,
            "cluster_nodes": sum(n["Alive"] for n in ray.nodes()),
            "trainer_ranks": [node_of(r) for r in self.trainers.ranks],
            "rollout_workers": [node_of(w) for w in self.rollout.workers],
        }
        (self.run_dir / "placement.json").write_text(json.dumps(placement, indent=1))

    def close(self) -> None:
        if hasattr(self, "logger"):
            self.logger.close()
        if getattr(self, "owns_ray", False):
            ray.shutdown()
        else:  # a shared cluster outlives the run: free what the run took
            for group in (getattr(self, "rollout", None), getattr(self, "trainers", None)):
                if group is not None:
                    group.shutdown()
            if hasattr(self, "scheduler"):
                self.scheduler.kill()
