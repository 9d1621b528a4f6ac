"""Policy and reference models at real sizes: built already sharded under ZeRO-3
(deepspeed.zero.Init, through transformers' HfDeepSpeedConfig, so no rank ever
holds the full model), gradient checkpointing, and LoRA adapters (peft) whose
merged weights W + scale * B @ A travel under the base model's Hugging Face
names, so vLLM and save_pretrained never see an adapter."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


def linear_module_names(model_path: str) -> list[str]:
    """Distinct short names of the model's linear layers inside its blocks (the
    LoRA targets it offers), from its config on the meta device: no weights read.
    The LM head is left out: an adapter there would untie a tied embedding."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    out = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not out})


def check_lora_targets(model_path: str, targets: list[str]) -> None:
    """ValueError naming the targets the model lacks and the ones it has."""
    names = linear_module_names(model_path)
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(f"trainer.lora.target_modules: the model has no linear module {missing}; its linear modules are {names}")


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


def add_lora(model: torch.nn.Module, lora: dict[str, Any]) -> torch.nn.Module:
    """The model wrapped by peft: base weights frozen, adapters trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=list(lora["target_modules"]), bias="none")
    return get_peft_model(model, config)


def merged_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A peft model's weights as the base model's state dict, every adapter
    folded in: the names and shapes vLLM and save_pretrained expect (a tied
    lm_head included, as the base state dict lists it). Parameters must be
    materialised (under ZeRO-3: gathered)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    with torch.no_grad():
        deltas = {
            f"{name}.base_layer.weight": layer.get_delta_weight(layer.active_adapters[0])
            for name, layer in base.named_modules() if isinstance(layer, LoraLayer)
        }
        return {
            key.replace(".base_layer.", "."): t + deltas[key] if key in deltas else t
            for key, t in base.state_dict().items() if ".lora_" not in key
        }
