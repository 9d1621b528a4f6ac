"""Policy and reference models at real sizes: built already sharded under ZeRO-3
(deepspeed.zero.Init, through transformers' HfDeepSpeedConfig, so no rank ever
holds the full model), gradient checkpointing, and LoRA adapters (peft) whose
merged weights W + scale * B @ A travel under the base model's Hugging Face
names, so vLLM and save_pretrained never see an adapter."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from gradus.trainer.config import LoraConfig


def linear_module_names(model_path: str) -> list[str]:
    """Distinct short names of the model's linear layers inside its blocks (the
    LoRA targets it offers), from its config on the meta device: no weights read.
    The LM head is left out: an adapter there would untie a tied embedding."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    out = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not out
        }
    )


def check_lora_targets(model_path: str, targets: list[str]) -> None:
    """ValueError naming the targets the model lacks and the ones it has."""
    names = linear_module_names(model_path)
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(
            f"trainer.lora.target_modules: the model has no linear module {missing}; its linear modules are {names}"
        )


@contextlib.contextmanager
def sharded_build(ds_config: dict[str, Any], on: bool) -> Iterator[None]:
    """While active, transformers' from_pretrained builds inside deepspeed.zero.Init
    and each rank keeps only its shard of every parameter (ZeRO-3)."""
    if not on:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    config = HfDeepSpeedConfig(ds_config)  # transformers keeps only a weak reference: hold it
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del config


def load_model(model_path: str, dtype: torch.dtype, ds_config: dict[str, Any], zero_init: bool) -> torch.nn.Module:
    """The Hugging Face model, sharded from the start under ZeRO-3 with zero_init."""
    from transformers import AutoModelForCausalLM

    with sharded_build(ds_config, zero_init and ds_config["zero_optimization"]["stage"] == 3):
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model.config.use_cache = False
    return model


def add_lora(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    """The model wrapped by peft: base weights frozen, adapters trainable."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    config = PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )
    return get_peft_model(model, config)


def _state_units(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(name, module) for every module that owns state-dict entries, in state-dict
    order; a LoRA layer is one unit with its base layer and adapters (its weight
    is merged from all three). A tied LM head is its own unit, as the state dict
    lists it."""
    from peft.tuners.lora import LoraLayer

    inside = None
    for name, module in model.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        if isinstance(module, LoraLayer):
            inside = name + "."
            yield name, module
        elif module._parameters or module._buffers:
            yield name, module


def _unit_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    from peft.tuners.lora import LoraLayer

    recurse = isinstance(module, LoraLayer)
    return [p for p in (module.parameters() if recurse else module._parameters.values()) if p is not None]


def _unit_state(name: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unit's state-dict entries under the base model's names (materialised
    parameters), a LoRA layer's weight as W + scale * B @ A."""
    from peft.tuners.lora import LoraLayer

    prefix = f"{name}." if name else ""
    if isinstance(module, LoraLayer):
        out = {prefix + k: t for k, t in module.get_base_layer().state_dict().items()}
        base = out[prefix + "weight"]  # merged in float32, then in the base weight's dtype (bf16: one rounding)
        delta = module.get_delta_weight(module.active_adapters[0])
        out[prefix + "weight"] = (base.float() + delta.float()).to(base.dtype)
        return out
    buffers = {
        k: t for k, t in module._buffers.items() if t is not None and k not in module._non_persistent_buffers_set
    }
    return {prefix + k: t.data for k, t in {**module._parameters, **buffers}.items() if t is not None}


def streamed_state(
    model: torch.nn.Module, lora: bool, zero3: bool, max_bytes: float = float("inf")
) -> Iterator[dict[str, torch.Tensor]]:
    """The policy's Hugging Face state dict (with LoRA: the base model's names,
    adapters merged in) in pieces of about `max_bytes`; under ZeRO-3 each piece's
    parameters are gathered only while it is the current one, so no rank holds
    more of the model than one piece (a collective: every rank walks every piece).
    A piece's tensors are valid until the next one is asked for."""
    import deepspeed

    base = model.get_base_model() if lora else model
    piece: list[tuple[str, torch.nn.Module]] = []
    size = 0

    def gathered() -> Iterator[dict[str, torch.Tensor]]:
        params = [p for _, m in piece for p in _unit_params(m)]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=zero3), torch.no_grad():
            yield {k: t for name, m in piece for k, t in _unit_state(name, m).items()}

    for name, module in _state_units(base):
        nbytes = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in _unit_params(module))
        if piece and size + nbytes > max_bytes:
            yield from gathered()
            piece, size = [], 0
        piece.append((name, module))
        size += nbytes
    if piece:
        yield from gathered()


def merged_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A peft model's weights as the base model's state dict, every adapter
    folded in: the names and shapes vLLM and save_pretrained expect (a tied
    lm_head included, as the base state dict lists it)."""
    return next(streamed_state(model, lora=True, zero3=False))
