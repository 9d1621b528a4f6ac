"""Cross-field checks of a run config that a type alone cannot express, run by
`load_config` before anything starts: kinds and their parameters (registries,
plugins by path), settings that cannot learn, memory options."""

from __future__ import annotations

import math

from gradus.launch.config.schema import Config
from gradus.launch.errors import GradusError, note_once
from gradus.launch.run.preempt import STOP_SIGNALS
from gradus.trainer.config import TrainerConfig

# Built-in sources whose answers only some verifiers can score (file sources and plugins are exempt).
SCORABLE_BY = {"arithmetic": {"numeric", "math"}, "countdown": {"countdown"}, "kk": {"kk"}}


def validate(cfg: Config, legacy_curriculum: bool = False) -> None:
    """Cross-field checks that a type alone cannot express. `legacy_curriculum`: the
    config gave curriculum.kind/params (error messages name those keys)."""
    from gradus.launch.config.registries import (
        picks,
    )  # the registries import torch; `gradus submit` needs them only here

    names = [d.name for d in cfg.data.distributions]
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise GradusError(
            f"data.distributions: list at least one distribution, each with a unique non-empty name (got {names})"
        )
    for key, value, registry in picks(
        cfg, legacy_curriculum
    ):  # a plugin by path is loaded and checked now, before Ray starts
        try:
            registry.get(value)
        except (KeyError, ValueError) as err:
            raise GradusError(f"{key}: {err}") from None
    registries = {key: registry for key, _, registry in picks(cfg, legacy_curriculum)}
    bandit = cfg.curriculum.bandit
    legacy = legacy_curriculum  # name the keys the config used
    kind_key = "curriculum.kind" if legacy else "curriculum.bandit.kind"
    specs = [("curriculum.params" if legacy else "curriculum.bandit", kind_key, bandit.get("kind"), bandit)]
    specs += [
        (f"curriculum.filters.{i}", f"curriculum.filters.{i}.kind", spec["kind"], spec)
        for i, spec in enumerate(cfg.curriculum.filters)
    ]
    if cfg.curriculum.budget is not None:
        specs.append(
            ("curriculum.budget", "curriculum.budget.kind", cfg.curriculum.budget["kind"], cfg.curriculum.budget)
        )
    specs.append(
        (
            "curriculum.prompts",
            "curriculum.prompts.kind",
            cfg.curriculum.prompts.get("kind", "shuffle"),
            cfg.curriculum.prompts,
        )
    )
    for key, kind_key, kind, spec in specs:  # checked here, so an ablation cell's typo fails before the first run
        registry = registries[kind_key]
        try:
            registry.check_params(str(kind), registry.positional, {k: v for k, v in spec.items() if k != "kind"})
        except (TypeError, ValueError, KeyError) as err:
            raise GradusError(f"{key}: {err.args[0] if err.args else err}") from None
    for key, value, low in [
        ("data.eval_size", cfg.data.eval_size, 0),
        *(
            (f"data.distributions.{i}.eval_size ({d.name})", d.eval_size, 0)
            for i, d in enumerate(cfg.data.distributions)
            if d.eval_size is not None
        ),
        ("curriculum.max_refill_rounds", cfg.curriculum.max_refill_rounds, 0),
    ]:
        if value < low:
            raise GradusError(f"{key}: must be >= {low}, got {value}")
    if not cfg.trainer.lr > 0:
        raise GradusError(f"trainer.lr: must be > 0, got {cfg.trainer.lr} (an update with lr 0 changes nothing)")
    if not 0 < cfg.rollout.top_p <= 1:
        raise GradusError(f"rollout.top_p: must be in (0, 1], got {cfg.rollout.top_p}")
    screen = cfg.rollout.screen
    if screen is not None:
        k = screen.get("samples")
        if set(screen) != {"samples"} or not isinstance(k, int) or not 1 <= k < cfg.rollout.group_size:
            raise GradusError(
                f"rollout.screen: give {{samples: k}} with 1 <= k < rollout.group_size="
                f"{cfg.rollout.group_size}, got {screen}"
            )
        if cfg.rollout.async_generation:
            raise GradusError(
                "rollout.screen with rollout.async_generation: a sync could land between a prompt's "
                "screening and its completion (two policies in one group); use one of the two"
            )
    rule = cfg.rollout.group_rule
    if rule is not None:
        low, high = rule.get("min"), rule.get("max")
        if (
            not {"min", "max"} <= set(rule) <= {"min", "max", "kind"}
            or rule.get("kind", "greedy") != "greedy"
            or not all(isinstance(v, int) for v in (low, high))
            or not (2 <= low <= cfg.rollout.group_size <= high)
        ):
            raise GradusError(
                f"rollout.group_rule: give {{min: a, max: b}} (kind: greedy, the one rule, may be named) with "
                f"2 <= a <= rollout.group_size={cfg.rollout.group_size} <= b, got {rule}"
            )
        if screen is not None:
            raise GradusError("rollout.group_rule with rollout.screen: choose one way of sizing groups")
    if cfg.run.call_timeout_s < 0:
        raise GradusError(
            f"run.call_timeout_s: must be >= 0 (0 sizes it from the run's pace), got {cfg.run.call_timeout_s}"
        )
    if cfg.rollout.gpu_memory_utilization is not None and not 0 < cfg.rollout.gpu_memory_utilization <= 1:
        raise GradusError(
            f"rollout.gpu_memory_utilization: must be in (0, 1], got {cfg.rollout.gpu_memory_utilization}"
        )
    if not 0 <= cfg.reward.max_error_frac <= 1:
        raise GradusError(f"reward.max_error_frac: must be between 0 and 1, got {cfg.reward.max_error_frac}")
    if cfg.data.train_size is not None and cfg.data.train_size < 1:
        raise GradusError(f"data.train_size: must be >= 1 or null (every row of a file), got {cfg.data.train_size}")
    if cfg.rollout.max_staleness < 0:
        raise GradusError(f"rollout.max_staleness: must be >= 0, got {cfg.rollout.max_staleness}")
    if cfg.sync.bucket_mb <= 0:
        raise GradusError(f"sync.bucket_mb: must be > 0, got {cfg.sync.bucket_mb}")
    if cfg.cluster.colocate and cfg.rollout.tensor_parallel_size > 1:
        raise GradusError(
            "cluster.colocate: a colocated rollout worker shares one trainer GPU; "
            "set rollout.tensor_parallel_size=1 or cluster.colocate=false"
        )
    for key, value in [
        ("rollout.num_workers", cfg.rollout.num_workers),
        ("rollout.prompts_per_step", cfg.rollout.prompts_per_step),
        ("rollout.group_size", cfg.rollout.group_size),
        ("rollout.max_tokens", cfg.rollout.max_tokens),
        ("trainer.world_size", cfg.trainer.world_size),
        ("trainer.max_tokens_per_micro_batch", cfg.trainer.max_tokens_per_micro_batch),
        ("run.steps", cfg.run.steps),
        ("eval.samples", cfg.eval.samples),
        ("trainer.ppo_epochs", cfg.trainer.ppo_epochs),
        ("trainer.mini_batches", cfg.trainer.mini_batches),
        ("rollout.tensor_parallel_size", cfg.rollout.tensor_parallel_size),
    ]:
        if value < 1:
            raise GradusError(f"{key}: must be >= 1, got {value}")
    if cfg.run.preempt_signal and cfg.run.preempt_signal not in STOP_SIGNALS:
        raise GradusError(
            f"run.preempt_signal: {cfg.run.preempt_signal!r} is not one of {sorted(STOP_SIGNALS)} "
            '(or "" for SIGTERM only)'
        )
    if cfg.trainer.zero_stage not in (0, 1, 2, 3):
        raise GradusError(f"trainer.zero_stage: must be 0, 1, 2 or 3, got {cfg.trainer.zero_stage}")
    _validate_memory(cfg.trainer)
    _validate_learning(cfg)
    _validate_retirement(cfg)
    _note_row_recurrence(cfg)


def _validate_retirement(cfg: Config) -> None:
    """`pass_rate` whose `decay` caps a row's evidence below what retirement needs
    never retires a row, silently: n samples a group at discount 1 - decay add up
    to at most n / decay, and a flat prior then gives P(p >= retire_p) at most
    1 - retire_p^(1 + n / decay)."""
    params = cfg.curriculum.prompts
    if params.get("kind") != "pass_rate":
        return
    decay, retire_p, confidence = (
        float(params.get(k, d)) for k, d in [("decay", 0.1), ("retire_p", 0.9), ("confidence", 0.9)]
    )
    n = max(cfg.rollout.group_size, (cfg.rollout.group_rule or {}).get("max", 0))
    if not (0 < decay <= 1 and 0 < retire_p < 1 and 0 < confidence < 1):
        return  # the sampler's own check names the bad value
    needed = math.log(1 - confidence) / math.log(retire_p) - 1  # evidence a row needs, all right
    if n / min(decay, 0.95) < needed:  # the sampler keeps a discount of at least 0.05
        raise GradusError(
            f"curriculum.prompts: pass_rate with decay={decay} keeps at most {n / decay:.1f} samples of a row's "
            f"evidence (groups of {n}), short of the {needed:.1f} all-right samples that make "
            f"P(p >= retire_p={retire_p}) >= confidence={confidence}: no row would ever retire. "
            f"Use decay <= {n / needed:.3f} (the default is 0.1), or lower confidence or retire_p"
        )


def _note_row_recurrence(cfg: Config) -> None:
    """A prompt sampler that decides from each row's own earlier groups (greso,
    pass_rate, thompson) has nothing to go on when rows seldom come back: say so
    when the run draws fewer prompts than the generated sources hold rows."""
    from gradus.curriculum.posteriors import PosteriorSampler
    from gradus.curriculum.prompts import PROMPT_SAMPLERS
    from gradus.curriculum.sources import DEFAULT_SYNTHETIC_ROWS

    kind = cfg.curriculum.prompts.get("kind", "shuffle")
    sampler = PROMPT_SAMPLERS.get(kind)
    if not (isinstance(sampler, type) and issubclass(sampler, PosteriorSampler)):
        return
    if any(d.source == "file" for d in cfg.data.distributions):  # a file's row count is known only once read
        return
    rows = len(cfg.data.distributions) * (cfg.data.train_size or DEFAULT_SYNTHETIC_ROWS)
    draws = cfg.run.steps * cfg.rollout.prompts_per_step
    if draws < rows:
        note_once(
            f"curriculum.prompts kind={kind} decides from each row's own earlier groups, and this run draws "
            f"{draws} prompts from {rows} training rows ({draws / rows:.2f} per row): rows seldom come back, so "
            "expect little effect; a smaller data.train_size makes them recur"
        )


def _validate_memory(t: TrainerConfig) -> None:
    """LoRA and offload settings that cannot work (target modules are checked against
    the model in launch.driver.Run)."""
    if t.lora is not None:
        if t.lora.rank <= 0:
            raise GradusError(
                f"trainer.lora.rank: must be >= 1, got {t.lora.rank} (leave trainer.lora unset for full fine-tuning)"
            )
        if t.lora.alpha <= 0 or not 0 <= t.lora.dropout < 1 or not t.lora.target_modules:
            raise GradusError(
                f"trainer.lora: need alpha > 0, 0 <= dropout < 1 and at least one target module, got {t.lora}"
            )
        if t.lora.dropout > 0 and (t.ppo_epochs > 1 or t.mini_batches > 1):
            raise GradusError(
                f"trainer.lora.dropout={t.lora.dropout} with several updates per batch (ppo_epochs={t.ppo_epochs}, "
                f"mini_batches={t.mini_batches}): the ratio would compare a dropout (train-mode) forward with "
                "dropout-free old log-probs, a biased update; set trainer.lora.dropout=0 or one update per batch"
            )
    if t.offload.params == "cpu" and t.zero_stage != 3:
        raise GradusError(
            f"trainer.offload.params=cpu needs trainer.zero_stage=3 (got {t.zero_stage}): "
            "only ZeRO-3 partitions parameters"
        )
    if t.offload.optimizer == "cpu" and t.optimizer != "adamw":
        raise GradusError(
            f"trainer.offload.optimizer=cpu runs DeepSpeed's CPU Adam: it needs trainer.optimizer=adamw, "
            f"got {t.optimizer}"
        )
    if t.offload.optimizer == "cpu" and t.zero_stage < 1:
        raise GradusError(
            "trainer.offload.optimizer=cpu needs trainer.zero_stage >= 1: ZeRO-0 has no optimizer partition to offload"
        )


def _validate_learning(cfg: Config) -> None:
    """Settings that start a run which cannot learn, or loss options that contradict each other."""
    t, r, e = cfg.trainer, cfg.rollout, cfg.eval
    if r.group_size < 2:
        raise GradusError(
            f"rollout.group_size={r.group_size}: every group advantage would be 0 and nothing is learned; "
            "GRPO compares samples of one prompt, use rollout.group_size >= 2"
        )
    if r.temperature <= 0:
        raise GradusError(
            f"rollout.temperature={r.temperature}: greedy training samples of a prompt are identical (advantage 0); "
            "use a temperature > 0, e.g. 1.0"
        )
    for i, dist in enumerate(cfg.data.distributions):
        allowed = SCORABLE_BY.get(dist.source)
        if allowed is not None and ":" not in dist.verifier and dist.verifier not in allowed:
            raise GradusError(
                f"data.distributions.{i} ({dist.name}): verifier {dist.verifier!r} "
                f"cannot score {dist.source!r} answers "
                f"(it would score 0 forever); use verifier: {' or '.join(sorted(allowed))}"
            )
    if t.scale_rewards != "group" and t.estimator != "grpo":
        raise GradusError(
            f"trainer.scale_rewards={t.scale_rewards} applies to estimator grpo only "
            "(drgrpo is grpo with scale_rewards=none)"
        )
    if t.clip_ratio_c is not None and t.clip_ratio_c <= 1:
        raise GradusError(
            f"trainer.clip_ratio_c: the dual-clip bound must be > 1 (verl uses 3.0), got {t.clip_ratio_c}"
        )
    if t.importance.cap <= 0:
        raise GradusError(f"trainer.importance.cap: must be > 0, got {t.importance.cap}")
    if t.importance.on == "all" and t.old_logprobs == "rollout" and (t.ppo_epochs > 1 or t.mini_batches > 1):
        raise GradusError(
            "trainer.importance.on=all weights tokens by pi_trainer_old / pi_vLLM, which is 1 with "
            "trainer.old_logprobs=rollout (used with several updates per batch); "
            "use old_logprobs=recompute or importance.on=stale"
        )
    if t.loss_norm_len is not None and t.loss_norm_len < 1:
        raise GradusError(f"trainer.loss_norm_len: must be >= 1, got {t.loss_norm_len}")
    held_out = [cfg.data.eval_size if d.eval_size is None else d.eval_size for d in cfg.data.distributions]
    if e.every and not any(held_out):
        raise GradusError(
            f"eval.every={e.every} needs held-out rows: set data.eval_size >= 1 (and no distribution's own "
            "eval_size to 0 in every one) or eval.every=0"
        )
    if e.temperature <= 0 and e.samples > 1:
        raise GradusError(
            f"eval.samples={e.samples} at eval.temperature=0: greedy samples are identical; "
            "set eval.temperature > 0 or eval.samples=1"
        )
    bad = [k for k in e.k if not 1 <= k <= e.samples]
    if bad:
        raise GradusError(f"eval.k: pass@k needs 1 <= k <= eval.samples={e.samples}, got {bad}")
