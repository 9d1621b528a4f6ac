"""Typed run config: dataclasses hold every default; YAML presets and dotted CLI
overrides (`trainer.lr=1e-6`) change them. Unknown keys and ill-typed values are
errors that name the key."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from gradus.curriculum.registry import nearest
from gradus.launch.errors import GradusError
from gradus.rollout.rewards import RewardWeights
from gradus.trainer.config import TrainerConfig, choices

WANDB_MODES = choices(
    "wandb mode",
    {"offline": "logs in <run_dir>/wandb, no network", "online": "syncs to the wandb server", "disabled": "no wandb"},
)
DTYPES = choices(
    "model dtype",
    {
        "auto": "float32 on CPU, bfloat16 on GPUs that support it, else float16",
        "float32": "full precision (the CPU choice: bf16 is emulated and ~4x slower there)",
        "bfloat16": "bf16 weights, fp32 master weights and optimizer state",
        "float16": "fp16 weights, fp32 master weights, dynamic loss scaling",
    },
)
DEVICES = choices("device", {"auto": "cuda when the Ray cluster has GPUs, else cpu", "cpu": "CPU only", "cuda": "GPUs"})


@dataclass
class ModelConfig:
    path: str = (
        "smollm2-135m-instruct"  # an embedded model name (see launch/prepare/model_dirs.py) or a local HF directory
    )
    dtype: str = "auto"  # DTYPES: auto = float32 on CPU, bf16 on GPUs that support it (fp16 otherwise)


@dataclass
class DistributionConfig:
    name: str = ""
    source: str = (
        "arithmetic"  # a synthetic generator or `file` (curriculum/sources.py), or a plugin path/to/file.py:fn
    )
    params: dict = field(default_factory=dict)  # the source's knobs, e.g. {digits: 2}
    verifier: str = (
        "numeric"  # rollout/rewards.py VERIFIERS, or a reward file path/to/reward.py:compute_score (verl's signature)
    )
    verifier_threshold: float = 1.0  # a score >= this counts as correct (unless a reward file returns `acc`)
    budget: Optional[int] = None  # this distribution's base length budget, decayed by curriculum.budget
    eval_size: Optional[int] = None  # this distribution's held-out rows; None: data.eval_size


@dataclass
class DataConfig:
    distributions: list[DistributionConfig] = field(default_factory=list)  # named in the YAML preset
    train_size: Optional[int] = None  # training rows per distribution; None: every row of a file, 2000 from a generator
    eval_size: int = 32  # held-out rows per distribution, disjoint from training rows
    system_prompt: str = ""  # prepended as a system message when not empty


@dataclass
class CurriculumConfig:
    # the distribution-level curriculum, a spec like every other: {kind, **params}, e.g. {kind: ucb, c: 1.0}
    bandit: dict = field(default_factory=lambda: {"kind": "uniform"})
    kind: Optional[str] = None  # deprecated: bandit.kind (still read, with a note)
    params: Optional[dict] = None  # deprecated: the parameters beside bandit.kind
    filters: list[dict] = field(default_factory=list)  # e.g. [{kind: nonzero_std}]
    max_refill_rounds: int = 2  # extra generation rounds to replace filtered groups
    budget: Optional[dict] = (
        None  # length budget schedule, e.g. {kind: exponential, initial: 96, decay: 0.8, every: 5, minimum: 24}
    )
    budget_prompt: str = ""  # e.g. "{prompt} Answer in at most {budget} tokens."; empty = budget not in the prompt
    prompts: dict = field(
        default_factory=lambda: {"kind": "shuffle"}
    )  # row order inside a distribution (curriculum/prompts.py)


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
    # None: eager on CPU (docs/reference/cpu-stack.md), compiled with CUDA graphs on GPUs
    enforce_eager: Optional[bool] = None
    cpus_per_worker: float = 1.0  # Ray CPUs reserved per worker
    tensor_parallel_size: int = 1  # CUDA: GPUs per worker (vLLM tensor parallel)
    # CUDA: vLLM's share of each GPU (weights + KV cache); None: 0.9 with GPUs of its own, colocated 0.5 split
    gpu_memory_utilization: Optional[float] = None
    resources: dict = field(default_factory=dict)  # custom Ray resources per worker, e.g. {rollout_node: 1}
    # {samples: k}: generate k per prompt first; only prompts whose k disagree are completed to group_size
    screen: Optional[dict] = None
    # {min: a, max: b}: a group size per prompt within group_size x prompts samples, each sample where the
    # row's posterior says it most lowers the chance of an all-equal group (row_posteriors.allocate_group_sizes)
    group_rule: Optional[dict] = None
    async_generation: bool = False  # generate the next batches while the trainer updates (launch/run/driver.py)
    max_staleness: int = (
        1  # async: a batch is trained at most this many policy versions after the one that generated it
    )


@dataclass
class EvalConfig:
    every: int = 0  # held-out evaluation every k steps (and after the last); 0 = off
    samples: int = 1  # samples per held-out prompt: eval/<name>/avg@<samples>
    temperature: float = 0.0  # 0 = greedy (then samples must be 1: greedy samples are identical)
    k: list[int] = field(default_factory=list)  # eval/<name>/pass@k for each k <= samples (unbiased estimator)
    at_start: bool = (
        False  # with every > 0: also evaluate the initial policy (<run_dir>/eval_start.json, step -1 in plots)
    )


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "gradus"


@dataclass
class ClusterConfig:
    address: str = ""  # "" = start a local Ray; "auto" or HOST:PORT = join a running cluster (RAY_ADDRESS works too)
    device: str = "auto"  # cpu | cuda | auto (cuda when the Ray cluster has GPUs)
    colocate: bool = (
        False  # rollout workers share the trainer ranks' placement bundles; on CUDA vLLM sleeps through each update
    )


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
    # deadline of any wait on an actor call; past it the actor counts as dead (restart paths). 0: sized from
    # the run's pace (30 min until the first step ends, then max(5 min, 10 x the longest step))
    call_timeout_s: float = 0.0
    save_final: bool = True  # write the trained policy to <run_dir>/final (a Hugging Face directory) at the end
    # warning signal: checkpoint the step in flight and exit 75 (SIGTERM does too, best-effort); "" = only SIGTERM
    preempt_signal: str = "SIGUSR1"


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


def to_dict(cfg: Any) -> dict:
    """The config as a plain mapping, as it is written (config.yaml, checkpoints,
    wandb): without curriculum.kind/params, which only mirror curriculum.bandit."""
    out = dataclasses.asdict(cfg)
    if isinstance(cfg, Config):
        for alias in ("kind", "params"):
            out["curriculum"].pop(alias, None)
    return out
