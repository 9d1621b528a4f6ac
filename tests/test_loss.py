"""The GRPO loss on a tiny Hugging Face model (no Ray, no DeepSpeed): a batch's
gradient must not depend on how it is split over ranks and micro-batches, for
every aggregation (Dr.GRPO's divisor is a constant of the run, not a
micro-batch's padded width); held-out avg@n and pass@k by hand."""
import dataclasses
from collections import defaultdict

import numpy as np
import pytest
import torch

from launch.config import TrainerConfig
from launch.metrics import held_out_metrics, pass_at_k
from trainer.batching import assign, contributes
from trainer.grpo import AGGREGATIONS, loss_options
from trainer.loss import micro_batch_loss


def _batch(n: int = 10) -> list[dict]:
    rng = np.random.default_rng(1)
    samples = []
    for i in range(n):
        prompt = rng.integers(3, 64, size=int(rng.integers(3, 12))).tolist()
        tokens = rng.integers(3, 64, size=int(rng.integers(2, 14))).tolist()
        advantage = 0.0 if i % 4 == 0 else float(rng.normal())
        samples.append({"prompt_ids": prompt, "tokens": tokens, "logprobs": [-2.0] * len(tokens), "advantage": advantage,
                        "weight": 0.0 if i == n - 1 else 1.0})  # the last one pads the batch (zero weight)
    return samples


def batch_gradient(model, samples: list[dict], cfg: dict, ranks: int, max_tokens: int, skip: bool = False) -> dict[str, torch.Tensor]:
    """What the trainer ranks compute together on one mini-batch: every rank's
    micro-batch losses (global denominators) backpropagated and summed, as
    DeepSpeed's all-reduce does, with the split the ranks get (trainer.batching.assign)."""
    model.zero_grad()
    stats: dict[str, float] = defaultdict(float)
    for share in assign(samples, ranks, max_tokens, skip, kl_in_loss=False):
        for micro in share["micro_batches"]:
            micro_batch_loss(model, micro, cfg, share["num_tokens"], share["num_seqs"], True, stats).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    scale = max(g.abs().max().item() for g in a.values())
    assert scale > 0
    return max((a[n] - b[n]).abs().max().item() for n in a) / scale


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_gradient_independent_of_ranks_and_micro_batches(tiny_model, agg):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).float()
    cfg = loss_options({**dataclasses.asdict(TrainerConfig()), "loss_agg": agg, "loss_norm_len": 16})
    samples = _batch()
    reference = batch_gradient(model, samples, cfg, ranks=1, max_tokens=10_000)
    for ranks, max_tokens in [(2, 10_000), (1, 40), (2, 24), (3, 30)]:
        assert _max_rel_diff(reference, batch_gradient(model, samples, cfg, ranks, max_tokens)) <= 1e-5, (ranks, max_tokens)


def test_skipping_uninformative_samples_keeps_the_gradient(tiny_model):
    """Zero-advantage samples and zero-weight padding get no forward/backward,
    yet the gradient equals the plain path's (denominators stay the batch's)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).float()
    samples = _batch(12)
    for s in samples[4:8]:  # an all-equal group (advantage exactly 0) besides the informative ones and the padding
        s["advantage"] = 0.0
    skipped = [s for s in samples if not contributes(s, kl_in_loss=False)]
    assert 5 <= len(skipped) < len(samples)
    for agg in ("token-mean", "seq-mean-token-sum-norm"):
        cfg = loss_options({**dataclasses.asdict(TrainerConfig()), "loss_agg": agg, "loss_norm_len": 16})
        plain = batch_gradient(model, samples, cfg, ranks=2, max_tokens=40)
        for ranks in (1, 2, 3):
            assert _max_rel_diff(plain, batch_gradient(model, samples, cfg, ranks, 40, skip=True)) <= 1e-5, (agg, ranks)
    shares = assign([{**s, "advantage": 0.0} for s in samples], 2, 40, skip=True)  # nothing informative: one dummy pass per rank
    assert [[len(m) for m in share["micro_batches"]] for share in shares] == [[1], [1]]
    assert all(m[0]["weight"] == 0.0 and len(m[0]["tokens"]) == 1 for share in shares for m in share["micro_batches"])


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 3, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)


def test_held_out_metrics_avg_and_pass_at_k():
    def group(name, correct):
        return {"distribution": name, "samples": [{"correct": float(c)} for c in correct]}

    groups = [group("a/x", [1, 0, 0, 0]), group("a/x", [0, 0, 0, 0]), group("b", [1, 1, 0, 1])]
    m = held_out_metrics(groups, ["a/x", "b"], ks=[1, 2])
    assert m["eval/a/x/avg@4"] == m["eval/a/x/accuracy"] == pytest.approx(1 / 8)
    assert m["eval/a/x/pass@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["eval/b/pass@2"] == 1.0 and m["eval/b/pass@1"] == pytest.approx(0.75)
    assert m["eval/accuracy"] == m["eval/avg@4"] == pytest.approx(4 / 12)
    assert m["eval/pass@2"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
