"""Typed run config: dataclasses hold every default; YAML presets and dotted CLI
overrides (`trainer.lr=1e-6`) change them. Unknown keys and ill-typed values are
errors that name the key."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from gradus.curriculum.registry import is_plugin, nearest, resolve_plugin
from gradus.launch.errors import GradusError
from gradus.rollout.rewards import RewardWeights

# Signals a run may take as its preemption warning (catchable, not already used by Ray or the terminal).
STOP_SIGNALS = {"SIGUSR1", "SIGUSR2", "SIGTERM", "SIGHUP", "SIGXCPU", "SIGALRM"}


@dataclass
class ModelConfig:
    path: str = "smollm2-135m-instruct"  # an embedded model name (see launch/models.py) or a local HF directory
    dtype: str = "float32"  # float32 on CPU: bf16 is emulated and ~4x slower there


@dataclass
class DistributionConfig:
    name: str = ""
    source: str = "arithmetic"  # a synthetic generator or `file` (curriculum/sources.py), or a plugin path/to/file.py:fn
    params: dict = field(default_factory=dict)  # the source's knobs, e.g. {digits: 2}
    verifier: str = "numeric"  # rollout/rewards.py VERIFIERS, or a reward file path/to/reward.py:compute_score (verl's signature)
    verifier_threshold: float = 1.0  # a score >= this counts as correct (unless a reward file returns `acc`)
    budget: Optional[int] = None  # this distribution's base length budget, decayed by curriculum.budget


@dataclass
class DataConfig:
    distributions: list[DistributionConfig] = field(default_factory=list)  # named in the YAML preset
    train_size: Optional[int] = None  # training rows per distribution; None: every row of a file, 2000 from a generator
    eval_size: int = 32  # held-out rows per distribution, disjoint from training rows
    system_prompt: str = ""  # prepended as a system message when not empty


@dataclass
class CurriculumConfig:
    kind: str = "uniform"  # curriculum/bandits.py CURRICULA
    params: dict = field(default_factory=dict)
    filters: list[dict] = field(default_factory=list)  # e.g. [{kind: nonzero_std}]
    max_refill_rounds: int = 2  # extra generation rounds to replace filtered groups
    budget: Optional[dict] = None  # length budget schedule, e.g. {kind: exponential, initial: 96, decay: 0.8, every: 5, minimum: 24}
    budget_prompt: str = ""  # e.g. "{prompt} Answer in at most {budget} tokens."; empty = budget not in the prompt
    prompts: dict = field(default_factory=lambda: {"kind": "shuffle"})  # row order inside a distribution (curriculum/prompts.py)


@dataclass
class RolloutConfig:
    num_workers: int = 1
    prompts_per_step: int = 8
    group_size: int = 4
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    budget_slack: float = 0.0  # hard cap max_tokens = min(max_tokens, ceil(budget * slack)); 0 = no cap
    kv_cache_gib: float = 1.0  # vLLM-CPU KV cache size
    max_model_len: int = 512
    threads: int = 2
    enforce_eager: bool = True  # false: vLLM compiles the model (README: "Notes on the CPU stack")
    cpus_per_worker: float = 1.0  # Ray CPUs reserved per worker
    tensor_parallel_size: int = 1  # CUDA: GPUs per worker (vLLM tensor parallel)
    gpu_memory_utilization: float = 0.5  # CUDA: vLLM's share of each GPU (weights + KV cache)
    resources: dict = field(default_factory=dict)  # custom Ray resources per worker, e.g. {rollout_node: 1}
    async_generation: bool = False  # generate the next batches while the trainer updates (launch/driver.py)
    max_staleness: int = 1  # async: a batch is trained at most this many policy versions after the one that generated it


@dataclass
class ImportanceConfig:
    """Per-token pi_proximal / pi_behaviour weights (README: Loss options and their sources)."""

    mode: str = "truncate"  # truncate: min(weight, cap) | mask: tokens over the cap get weight 0 (AReaL)
    cap: float = 2.0
    on: str = "stale"  # stale: async samples only (decoupled PPO) | all: every token (rollout/trainer mismatch)


@dataclass
class LoraConfig:
    """LoRA adapters (peft): only they train; syncs and exports carry merged weights."""

    rank: int = 16
    alpha: float = 32.0  # scale = alpha / rank
    dropout: float = 0.0  # 0: the forward that computes the GRPO ratio must be the sampling policy
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class OffloadConfig:
    """DeepSpeed ZeRO offload on CUDA (a CPU-only run already keeps everything in CPU memory)."""

    optimizer: str = "none"  # none | cpu: Adam states and step on the CPU (DeepSpeedCPUAdam); ZeRO >= 1
    params: str = "none"  # none | cpu: parameters live in CPU memory between uses; ZeRO-3


@dataclass
class TrainerConfig:
    world_size: int = 1  # data-parallel DeepSpeed ranks
    lr: float = 2e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lr_schedule: str = "constant"  # constant | linear | cosine | wsd (trainer/schedules.py)
    warmup_steps: int = 0  # optimiser steps of linear warmup
    min_lr_ratio: float = 0.0  # where decaying schedules end, as a fraction of lr
    decay_fraction: float = 0.2  # wsd: the last fraction of training that decays
    ppo_epochs: int = 1  # passes over each batch
    mini_batches: int = 1  # optimiser steps per pass
    old_logprobs: str = "recompute"  # with several updates per batch: recompute (trainer) | rollout (vLLM's)
    kl_coef: float = 0.0  # 0 = no reference model at all
    kl_kind: str = "k3"
    kl_in: str = "loss"  # loss: a KL term in the loss | reward: reward -= kl_coef * summed KL before advantages
    max_tokens_per_micro_batch: int = 1024  # padded tokens (rows x longest row) per forward/backward
    skip_uninformative: bool = True  # no forward/backward for samples whose loss term is 0 (advantage 0, no KL in the loss; padding)
    share_prompts: bool = True  # a group's prompt goes through the model once, its completions attend to it (4D mask)
    zero_stage: int = 1
    zero_init: bool = True  # ZeRO-3: build models already sharded (deepspeed.zero.Init); false loads the full model on each rank first
    gradient_checkpointing: bool = False  # recompute activations in backward (HF, non-reentrant): less memory, ~1 extra forward
    lora: Optional[LoraConfig] = None  # e.g. {rank: 16, alpha: 32}; None = full fine-tuning
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    estimator: str = "grpo"  # trainer/grpo.py ADVANTAGE_ESTIMATORS
    scale_rewards: str = "group"  # grpo: divide by the group's std | batch: the batch's std (TRL) | none (= drgrpo)
    ratio_level: str = "token"  # token (PPO/GRPO) | sequence (GSPO: one length-normalised ratio per sequence)
    clip_low: Optional[float] = None  # None: 0.2, or 3e-4 with ratio_level=sequence (GSPO)
    clip_high: Optional[float] = None  # None: 0.2, or 4e-4 with ratio_level=sequence (GSPO)
    clip_ratio_c: Optional[float] = None  # dual-clip (verl): a token with A < 0 loses at most -A * clip_ratio_c; None = off
    loss_agg: Optional[str] = None  # trainer/grpo.py AGGREGATIONS; None: token-mean, or seq-mean-token-mean with ratio_level=sequence
    loss_norm_len: Optional[int] = None  # seq-mean-token-sum-norm (Dr.GRPO) divisor; None = rollout.max_tokens
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    importance_cap: Optional[float] = None  # deprecated: trainer.importance.cap
    threads: int = 2
    cpus_per_rank: float = 1.0  # Ray CPUs reserved per rank (on CUDA each rank also takes one GPU)
    resources: dict = field(default_factory=dict)  # custom Ray resources per rank, e.g. {trainer_node: 1}


@dataclass
class EvalConfig:
    every: int = 0  # held-out evaluation every k steps (and after the last); 0 = off
    samples: int = 1  # samples per held-out prompt: eval/<name>/avg@<samples>
    temperature: float = 0.0  # 0 = greedy (then samples must be 1: greedy samples are identical)
    k: list[int] = field(default_factory=list)  # eval/<name>/pass@k for each k <= samples (unbiased estimator)
    at_start: bool = False  # with every > 0: also evaluate the initial policy (<run_dir>/eval_start.json, step -1 in plots)


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "gradus"


@dataclass
class ClusterConfig:
    address: str = ""  # "" = start a local Ray; "auto" or HOST:PORT = join a running cluster (RAY_ADDRESS works too)
    device: str = "auto"  # cpu | cuda | auto (cuda when the Ray cluster has GPUs)
    colocate: bool = False  # rollout workers share the trainer ranks' placement bundles; on CUDA vLLM sleeps through each update


@dataclass
class SyncConfig:
    transport: str = "object_store"  # object_store | broadcast (trainer/sync.py)
    bucket_mb: float = 512.0  # weights travel in flat buckets of at most this size


@dataclass
class RunConfig:
    steps: int = 10
    seed: int = 0
    run_dir: str = "runs/default"
    checkpoint_every: int = 10  # steps between checkpoints (and one at the end); 0 = none
    keep_checkpoints: int = 2  # newest complete checkpoints kept
    max_restarts: int = 2  # automatic restarts from the newest checkpoint when a trainer rank dies
    save_final: bool = True  # write the trained policy to <run_dir>/final (a Hugging Face directory) at the end
    preempt_signal: str = "SIGUSR1"  # warning signal: checkpoint the step in flight and exit 75 (SIGTERM does too, best-effort); "" = only SIGTERM


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    reward: RewardWeights = field(default_factory=RewardWeights)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, options[0], key)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise GradusError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(v, item, f"{key}.{i}") for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise GradusError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false", "1", "0", "yes", "no"):
            return str(value).lower() in ("true", "1", "yes")
        raise GradusError(f"{key}: expected true or false, got {value!r}")
    if hint in (int, float):
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or (hint is int and not number.is_integer()):
            kind = "an integer" if hint is int else "a number"
            raise GradusError(f"{key}: expected {kind}, got {value!r}")
        return hint(number)
    if hint is str:
        if isinstance(value, (dict, list)):
            raise GradusError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise GradusError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise GradusError(f"unknown config key {where!r}{nearest(str(key), names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**kwargs)


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
            if node is None:
                raise GradusError(f"override {dotted!r}: {'.'.join(parts[: i + 1])} is not a valid list index")
        else:
            if node.get(part) is None:  # a section not given yet, or an optional one left unset (trainer.lora)
                node[part] = {}
            node = node[part]
    if isinstance(node, list):
        if not parts[-1].isdigit() or int(parts[-1]) >= len(node):
            raise GradusError(f"override {dotted!r}: {parts[-1]!r} is not a valid list index")
        node[int(parts[-1])] = value
    elif isinstance(node, dict):
        node[parts[-1]] = value
    else:
        raise GradusError(f"override {dotted!r}: {'.'.join(parts[:-1])} is not a section")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _read_preset(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML preset as a dict; `base: other.yaml` (relative to the file) is
    read first and this file's keys are merged on top."""
    if not path.is_file():
        raise GradusError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise GradusError(f"config file {path}: 'base' chain loops back to itself")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise GradusError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(loaded, dict):
        raise GradusError(f"config file {path}: expected a mapping at the top level")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    raw = _read_preset(path.parent / str(base), seen + (path.resolve(),))
    _merge(raw, loaded)
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML preset (and its bases) <- `key.sub=value` overrides, validated."""
    raw = to_dict(Config())
    if path is not None:
        _merge(raw, _read_preset(Path(path)))
    for item in overrides:
        if "=" not in item:
            raise GradusError(f"override {item!r} must look like key.sub=value")
        key, text = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(text) if text.strip() else "")
    cfg = build(Config, raw, "")
    _migrate(cfg)
    _resolve_paths(cfg)
    from gradus.launch.validate import validate  # it reads these dataclasses; the registries it checks import much more

    validate(cfg)
    return cfg


def _resolve_paths(cfg: Config) -> None:
    """Plugin files and data files made absolute against the launch directory
    before anything is sent to actors (other nodes, other working directories)."""
    for dist in cfg.data.distributions:
        dist.source, dist.verifier = (resolve_plugin(v) if is_plugin(v) else v for v in (dist.source, dist.verifier))
        if dist.source == "file" and isinstance(dist.params.get("path"), str):
            dist.params["path"] = str(Path.cwd() / Path(dist.params["path"]).expanduser())
    if is_plugin(cfg.curriculum.kind):
        cfg.curriculum.kind = resolve_plugin(cfg.curriculum.kind)
    for spec in [*cfg.curriculum.filters, cfg.curriculum.budget or {}, cfg.curriculum.prompts]:
        if is_plugin(spec.get("kind")):
            spec["kind"] = resolve_plugin(spec["kind"])


def _migrate(cfg: Config) -> None:
    """Keys that were renamed keep working, with one note; a value given under
    the new name wins (a resumed run's config.yaml still holds the old key)."""
    old, importance = cfg.trainer.importance_cap, cfg.trainer.importance
    if old is not None:
        explicit = importance.cap != ImportanceConfig().cap
        print(f"gradus: trainer.importance_cap is now trainer.importance.cap; using cap={importance.cap if explicit else old}", flush=True)
        importance.cap, cfg.trainer.importance_cap = (importance.cap if explicit else old), None


def _merge(base: dict, update: dict) -> None:
    """Recursive merge so a preset only names what it changes. Lists and `params`
    / `prompts` mappings replace: a kind's parameters never mix with another kind's."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in ("params", "prompts"):
            _merge(base[key], value)
        else:
            base[key] = value
