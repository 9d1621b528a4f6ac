"""Trainer checkpoints that any world size and ZeRO stage can load.

DeepSpeed's own checkpoints are partitioned per rank: a run resumed on another
number of ranks (or ZeRO stage) cannot read them without an offline conversion
(universal checkpoints), which covers only ZeRO optimizers. This module writes
the consolidated state instead: every trainable parameter's fp32 value and full
optimizer state tensors (Adam's moments; whatever keys the optimizer keeps), the
optimizer's scalar state (step), param-group hyperparameters, the LR schedule,
the engine's step counters and each rank's RNG. Loading scatters it into the
new engine's partitions through DeepSpeed's public safe_get/safe_set API.

<dir>/weights.safetensors   param/<name>, <state key>/<name>   (fp32, full shapes)
<dir>/trainer_state.json    optimizer scalars + param groups, LR schedule, engine
                            counters, world size and ZeRO stage saved from
<dir>/rng-<rank>.json       python/numpy/torch (and CUDA) RNG of each rank

Only safetensors and JSON: loading a checkpoint runs no code. (Checkpoints of
earlier versions, with .pt files, load through torch's weights_only loader.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

WEIGHTS = "weights.safetensors"
STATE = "trainer_state.json"
LEGACY_STATE = "trainer_state.pt"


def _base_optimizer(engine: Any) -> torch.optim.Optimizer:
    """The torch optimizer doing the update: ZeRO wraps it (over flat fp32
    partitions); without ZeRO the engine holds it directly."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def _trainable(engine: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters with optimizer state (all of them; with LoRA the adapters)."""
    return [(name, p) for name, p in engine.module.named_parameters() if p.requires_grad]


def _optimizer_keys(engine: Any) -> tuple[list[str], dict[str, Any]]:
    """The optimizer's per-element state keys (tensors shaped like what they
    track, e.g. exp_avg) and its scalar state (e.g. step), the same for every
    parameter. Empty before the first update."""
    entry = next(
        (v for v in _base_optimizer(engine).state.values() if v), {}
    )  # state is a defaultdict: skip empty entries
    tensors = [k for k, v in entry.items() if torch.is_tensor(v) and v.dim() > 0]
    scalars = {k: v.item() if torch.is_tensor(v) else v for k, v in entry.items() if k not in tensors}
    return sorted(tensors), scalars


def _full(engine: Any, param: torch.nn.Parameter, key: str | None) -> torch.Tensor:
    """A parameter's full fp32 value (key None) or optimizer state `key`; under
    ZeRO a collective (every rank calls it, in the same order)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    value = safe_get_full_fp32_param(param) if key is None else safe_get_full_optimizer_state(param, key)
    if value is None:  # no ZeRO: the module's parameter is the optimizer's own
        value = param if key is None else _base_optimizer(engine).state[param][key]
    return value.detach().float().cpu().reshape(param.ds_shape if hasattr(param, "ds_shape") else param.shape).clone()


def rng_state() -> dict[str, Any]:
    """This process's RNG states as JSON values; on CUDA also the rank's own
    device generator (dropout or sampling on the GPU draws from it)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """The inverse of rng_state; a CUDA state is restored where CUDA is (a GPU
    checkpoint resumed on CPU has no device generator to set)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def save(engine: Any, directory: str, rank: int) -> None:
    """Write the consolidated state (rank 0) and this rank's RNG; call on all ranks."""
    from safetensors.torch import save_file

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    keys, scalars = _optimizer_keys(engine)
    tensors = {}
    for name, param in _trainable(engine):
        for key in [None, *keys]:
            value = _full(engine, param, key)
            if rank == 0:
                tensors[f"{key or 'param'}/{name}"] = value
    (path / f"rng-{rank}.json").write_text(json.dumps(rng_state()))
    if rank != 0:
        return
    save_file(tensors, str(path / WEIGHTS))
    base = _base_optimizer(engine)
    meta = {
        "optimizer_keys": keys,
        "optimizer_scalars": scalars,
        "param_groups": [{k: v for k, v in group.items() if k != "params"} for group in base.param_groups],
        "lr_scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None,
        "engine": {
            "global_steps": engine.global_steps,
            "global_samples": engine.global_samples,
            "skipped_steps": engine.skipped_steps,
        },
        "world_size": engine.world_size,
        "zero_stage": engine.zero_optimization_stage(),
    }
    (path / STATE).write_text(json.dumps(meta))


def _master_params(engine: Any) -> list[list[torch.Tensor]]:
    """Per optimizer param group, the tensors the optimizer updates on this rank
    (ZeRO-3 puts its flat fp32 sub-groups into the groups only while it steps)."""
    base = _base_optimizer(engine)
    if hasattr(engine.optimizer, "fp32_partitioned_groups_flat"):
        groups: list[list[torch.Tensor]] = [[] for _ in base.param_groups]
        for i, flat in enumerate(engine.optimizer.fp32_partitioned_groups_flat):
            groups[engine.optimizer.sub_group_to_group_id[i]].append(flat)
        return groups
    return [list(group["params"]) for group in base.param_groups]


def _initialise_optimizer_state(engine: Any) -> None:
    """Make a fresh optimizer create its (lazily built) state: one update with
    zero gradients, learning rate and weight decay, which leaves the parameters
    as they are; the loaded values then overwrite that state."""
    base = _base_optimizer(engine)
    saved = [dict(group) for group in base.param_groups]
    for group, params in zip(base.param_groups, _master_params(engine)):
        group.update(params=params, lr=0.0, **({"weight_decay": 0.0} if "weight_decay" in group else {}))
        for p in params:
            p.grad = torch.zeros_like(p)
    base.step()
    for group, before in zip(base.param_groups, saved):
        for p in group["params"]:
            p.grad = None
        group.update(before)
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:  # ZeRO-1/2 point each parameter's fragment at the new state, as after their own first step
        link()


def _set_param(engine: Any, param: torch.nn.Parameter, value: torch.Tensor) -> None:
    """The module's (possibly partitioned, low-precision) parameter and the
    optimizer's fp32 master copy, where there is one."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param

    with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=hasattr(param, "ds_id")):
        param.data.copy_(value.to(param.dtype).reshape(param.shape))
    safe_set_full_fp32_param(param, value.to(engine.device))


def _set_state(engine: Any, param: torch.nn.Parameter, key: str, value: torch.Tensor) -> None:
    from deepspeed.utils import safe_set_full_optimizer_state

    if hasattr(param, "ds_id") or hasattr(param, "_hp_mapping"):  # ZeRO: into this rank's partition
        safe_set_full_optimizer_state(param, value.to(engine.device), key)
    else:
        state = _base_optimizer(engine).state[param][key]
        state.copy_(value.to(state.dtype).reshape(state.shape))


def load(engine: Any, directory: str, rank: int, changes: dict[str, float] | None = None) -> dict[str, Any]:
    """Load a checkpoint written by `save` at any world size and ZeRO stage; a
    collective. `changes`: optimizer settings this run sets differently ("lr",
    "weight_decay"), applied over the checkpoint's. Returns what it was saved
    from (world_size, zero_stage)."""
    from safetensors import safe_open

    path = Path(directory)
    if (path / STATE).is_file():
        meta = json.loads((path / STATE).read_text())
    else:
        meta = torch.load(path / LEGACY_STATE, weights_only=True)
    keys = meta["optimizer_keys"]
    base = _base_optimizer(engine)
    if keys and not any(base.state.values()):
        _initialise_optimizer_state(engine)
    with safe_open(str(path / WEIGHTS), framework="pt") as weights:
        for name, param in _trainable(engine):
            _set_param(engine, param, weights.get_tensor(f"param/{name}"))
            for key in keys:
                _set_state(engine, param, key, weights.get_tensor(f"{key}/{name}"))
    for entry in filter(None, base.state.values()):
        for key, value in meta["optimizer_scalars"].items():
            old = entry.get(key)  # fused AdamW wants `step` on the parameter's device
            entry[key] = torch.tensor(value, dtype=old.dtype, device=old.device) if torch.is_tensor(old) else value
    for group, saved in zip(base.param_groups, meta["param_groups"]):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})  # JSON lists: betas
    if meta["lr_scheduler"] is not None:
        engine.lr_scheduler.load_state_dict(meta["lr_scheduler"])
    _apply(engine, changes or {})
    engine.global_steps, engine.global_samples, engine.skipped_steps = (
        meta["engine"][k] for k in ("global_steps", "global_samples", "skipped_steps")
    )
    rng = path / f"rng-{rank}.json"
    if rng.is_file():
        set_rng_state(json.loads(rng.read_text()))
    elif (path / f"rng-{rank}.pt").is_file() and rank == 0:
        print(
            "gradus: this checkpoint keeps its RNG pickled (an earlier gradus); it is not unpickled, "
            "so sampling on the trainer differs from an uninterrupted run",
            flush=True,
        )
    return {"world_size": meta["world_size"], "zero_stage": meta["zero_stage"]}


def _apply(engine: Any, changes: dict[str, float]) -> None:
    """A resumed run's own lr / weight_decay over the checkpoint's: the schedule
    continues from its step with the new base lr."""
    base, scheduler = _base_optimizer(engine), engine.lr_scheduler
    if "lr" in changes:
        if scheduler is not None:
            scheduler.base_lrs = [changes["lr"]] * len(base.param_groups)
        for i, group in enumerate(base.param_groups):
            group["initial_lr"] = changes["lr"]
            factor = scheduler.lr_lambdas[i](scheduler.last_epoch) if scheduler is not None else 1.0
            group["lr"] = changes["lr"] * factor
        if scheduler is not None:
            scheduler._last_lr = [group["lr"] for group in base.param_groups]
    if "weight_decay" in changes:
        for group in base.param_groups:
            group["weight_decay"] = changes["weight_decay"]


def state(engine: Any) -> dict[str, np.ndarray]:
    """Every trainable parameter's fp32 value and optimizer state tensors, full
    shapes, keyed as in the checkpoint (for tests); a collective."""
    keys, _ = _optimizer_keys(engine)
    return {
        f"{key or 'param'}/{name}": _full(engine, p, key).numpy()
        for name, p in _trainable(engine)
        for key in [None, *keys]
    }
