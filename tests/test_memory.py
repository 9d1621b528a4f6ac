"""Memory features on a plain Hugging Face model (no Ray, no DeepSpeed):
gradient checkpointing, LoRA merged weights and adapters-disabled reference,
and the config errors (trainer ranks: test_trainer_on_cpu.py)."""

import pytest
import torch

from gradus.launch.config.load import load_config
from gradus.launch.errors import GradusError
from tests.test_trainer_on_cpu import _batch
from gradus.trainer.config import LoraConfig
from gradus.trainer.loss import completion_logprobs
from gradus.trainer.rank_setup import deepspeed_config
from gradus.trainer.models import add_lora, check_lora_targets, linear_module_names, merged_state, streamed_state

LORA = LoraConfig(rank=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _grads(model) -> dict[str, torch.Tensor]:
    model.train()
    completion_logprobs(model, _batch(n=4))["logp"].sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model):
    plain = _grads(_model(tiny_model))
    model = _model(tiny_model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = _grads(model)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    assert max(float((plain[n] - checkpointed[n]).abs().max()) for n in plain) < 1e-5


def test_lora_merged_weights_and_disabled_adapters(tiny_model):
    base = _model(tiny_model)
    model = add_lora(_model(tiny_model), LORA)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    torch.manual_seed(1)
    with torch.no_grad():  # adapters start as a no-op (B = 0): give them a value
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    merged = merged_state(model)
    expected = base.state_dict()
    assert {k: v.shape for k, v in merged.items()} == {
        k: v.shape for k, v in expected.items()
    }  # vLLM's names, tied lm_head too
    changed = {k for k in merged if not torch.equal(merged[k], expected[k])}
    assert changed == {k for k in expected if any(f"{t}.weight" in k for t in LORA.target_modules)}
    samples = _batch(n=3)
    with torch.no_grad():
        adapted = completion_logprobs(model, samples)["logp"]
        base.load_state_dict(merged)
        assert (
            float((completion_logprobs(base, samples)["logp"] - adapted).abs().max()) < 1e-5
        )  # W + scale*BA is the adapted policy
        with model.disable_adapter():
            disabled = completion_logprobs(model, samples)["logp"]
        assert torch.equal(disabled, completion_logprobs(_model(tiny_model), samples)["logp"])


def test_lora_target_modules_are_checked_against_the_model(tiny_model, tmp_path):
    from gradus.launch.run.driver import Run

    names = linear_module_names(str(tiny_model))
    assert names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]  # lm_head left out
    with pytest.raises(ValueError, match=r"no linear module \['qkv_proj'\]; its linear modules are \['down_proj'"):
        check_lora_targets(str(tiny_model), ["q_proj", "qkv_proj"])
    cfg = load_config(
        "configs/uniform.yaml",
        [f"model.path={tiny_model}", f"run.run_dir={tmp_path}", "trainer.lora={target_modules: [qkv_proj]}"],
    )
    with pytest.raises(GradusError, match="trainer.lora.target_modules: the model has no linear module"):
        Run(cfg)  # before Ray starts


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.lora.rank=0"], "trainer.lora.rank: must be >= 1"),
        (["trainer.lora={rank: 8, dropout: 1.5}"], "0 <= dropout < 1"),
        (["trainer.offload.params=cpu"], "trainer.offload.params=cpu needs trainer.zero_stage=3"),
        (["trainer.offload.optimizer=cpu", "trainer.zero_stage=0"], "needs trainer.zero_stage >= 1"),
        (["trainer.offload.optimizer=nvme"], "trainer.offload.optimizer: unknown value 'nvme'"),
    ],
)
def test_memory_config_errors(overrides, message):
    with pytest.raises(GradusError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config("configs/uniform.yaml", overrides)
    load_config(
        "configs/uniform.yaml",
        ["trainer.lora={rank: 8}", "trainer.offload={optimizer: cpu, params: cpu}", "trainer.zero_stage=3"],
    )


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_streamed_state_pieces_make_up_the_state_dict(tiny_model, lora):
    """Syncs, exports and saves walk the state in pieces of about a bucket (under
    ZeRO-3 each gathered only while in use): together they are the state dict
    (with LoRA the merged one), in its order, each piece within the bound unless
    one module alone exceeds it."""
    model = add_lora(_model(tiny_model), LORA) if lora else _model(tiny_model)
    whole = merged_state(model) if lora else model.state_dict()
    bound = 100_000
    pieces = list(streamed_state(model, lora, zero3=False, max_bytes=bound))
    assert len(pieces) > 3
    assert [k for p in pieces for k in p] == list(whole)
    assert all(torch.equal(p[k], whole[k]) for p in pieces for k in p)
    assert all(
        sum(t.numel() * t.element_size() for t in p.values()) <= bound or len({k.rsplit(".", 1)[0] for k in p}) == 1
        for p in pieces
    )


def test_lora_on_bf16_merges_in_float32_and_keeps_the_base_dtype(tiny_model):
    """peft keeps adapters in float32: W + scale * B @ A is summed in float32 and
    rounded to bf16 once, so every merged tensor (and sync bucket) has the model's dtype."""
    from transformers import AutoModelForCausalLM

    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16), LORA)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 1e-2)
    merged = merged_state(model)
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
    expected = (layer.base_layer.weight.float() + (b @ a) * layer.scaling["default"]).to(torch.bfloat16)
    assert torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], expected)
    assert not torch.equal(expected, layer.base_layer.weight)  # the adapter moved the weight past bf16 rounding


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_carries_the_model_dtype_at_every_stage(stage):
    """bf16/fp16 reach DeepSpeed at every stage (its mixed-precision optimizers keep fp32
    masters; fp16 with dynamic loss scaling), also the optimizer-free reference's."""
    for training in (True, False):
        make = lambda dtype: deepspeed_config(stage, 64, 4096, {}, 1.0, dtype, training)  # noqa: E731
        assert "bf16" not in make("float32") and "fp16" not in make("float32")
        assert make("bfloat16")["bf16"] == {"enabled": True} and "fp16" not in make("bfloat16")
        fp16 = make("float16")
        assert fp16["fp16"]["enabled"] and fp16["fp16"]["loss_scale"] == 0 and "bf16" not in fp16  # 0: dynamic
        assert fp16["zero_optimization"]["stage"] == stage
