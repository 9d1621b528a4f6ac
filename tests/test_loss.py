"""The GRPO loss on a tiny Hugging Face model (no Ray, no DeepSpeed): a batch's
gradient must not depend on how it is split over ranks and micro-batches, for
every aggregation (Dr.GRPO's divisor is a constant of the run, not a
micro-batch's padded width); held-out avg@n and pass@k by hand."""

import dataclasses
from collections import defaultdict

import numpy as np
import pytest
import torch

from gradus.trainer.config import ImportanceConfig, TrainerConfig
from gradus.curriculum.items import Item
from gradus.launch.run.metrics import held_out_metrics, pass_at_k
from gradus.rollout.records import Group, Sample
from gradus.trainer.batching import TrainSample, assign, contributes
from gradus.trainer.grpo import AGGREGATIONS, group_advantages, loss_options
from gradus.trainer.loss import completion_logprobs, micro_batch_loss


def _batch(n: int = 12, group_size: int = 1) -> list[TrainSample]:
    """Samples of random token ids; consecutive `group_size` ones share a prompt (a group)."""
    rng = np.random.default_rng(1)
    samples = []
    for i in range(n):
        if i % group_size == 0:
            prompt = rng.integers(3, 64, size=int(rng.integers(3, 12))).tolist()
        tokens = rng.integers(3, 64, size=int(rng.integers(2, 14))).tolist()
        advantage = 0.0 if i % 4 == 0 else float(rng.normal())
        samples.append(
            TrainSample(prompt, tokens, [-2.0] * len(tokens), advantage, weight=0.0 if i == n - 1 else 1.0)
        )  # the last one pads the batch (zero weight)
    return samples


def batch_gradient(
    model,
    samples: list[TrainSample],
    cfg,
    ranks: int,
    max_tokens: int,
    skip: bool = False,
    share: bool = False,
    single: bool = True,
    ref=None,
) -> dict[str, torch.Tensor]:
    """What the trainer ranks compute together on one mini-batch: every rank's
    micro-batch losses (global denominators) backpropagated and summed, as
    DeepSpeed's all-reduce does, with the split the ranks get (trainer.batching.assign).
    `single=False`: the samples' own old_logp (ratios away from 1); `ref`: a KL term in the loss."""
    model.zero_grad()
    stats: dict[str, float] = defaultdict(float)
    for part in assign(samples, ranks, max_tokens, skip, kl_in_loss=ref is not None, share_prompts=share):
        for micro in part.micro_batches:
            loss = micro_batch_loss(model, micro, cfg, share, part.num_tokens, part.num_seqs, single, stats, ref)
            loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    scale = max(g.abs().max().item() for g in a.values())
    assert scale > 0
    return max((a[n] - b[n]).abs().max().item() for n in a) / scale


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_gradient_independent_of_ranks_and_micro_batches(tiny_model, agg):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).float()
    cfg = loss_options(dataclasses.replace(TrainerConfig(), loss_agg=agg, loss_norm_len=16))
    samples = _batch()
    reference = batch_gradient(model, samples, cfg, ranks=1, max_tokens=10_000)
    for ranks, max_tokens in [(2, 10_000), (3, 30)]:
        assert _max_rel_diff(reference, batch_gradient(model, samples, cfg, ranks, max_tokens)) <= 1e-5, (
            ranks,
            max_tokens,
        )


def test_skipping_and_shared_prompts_keep_the_gradient(tiny_model):
    """Zero-advantage samples and zero-weight padding get no forward/backward, and
    each group's prompt is encoded once; the gradient equals the plain path's
    (denominators stay the batch's), for every split over ranks."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).float()
    samples = _batch(16, group_size=4)
    for s in samples[4:8]:  # an all-equal group (advantage exactly 0) besides the informative ones
        s.advantage = 0.0
    for s in samples[12:]:  # a padding group
        s.weight = 0.0
    skipped = [s for s in samples if not contributes(s, kl_in_loss=False)]
    assert len(skipped) >= 8
    for agg, splits in [
        ("token-mean", [(1, True, False), (3, True, False), (1, False, True), (2, True, True)]),
        ("seq-mean-token-sum-norm", [(2, True, True)]),
    ]:
        cfg = loss_options(dataclasses.replace(TrainerConfig(), loss_agg=agg, loss_norm_len=16))
        plain = batch_gradient(model, samples, cfg, ranks=2, max_tokens=40)
        for ranks, skip, share in splits:
            assert _max_rel_diff(plain, batch_gradient(model, samples, cfg, ranks, 60, skip, share)) <= 1e-5, (
                agg,
                ranks,
                skip,
                share,
            )
    shares = assign(
        [dataclasses.replace(s, advantage=0.0) for s in samples], 2, 40, skip=True
    )  # nothing informative: one dummy pass per rank
    assert [[len(m) for m in part.micro_batches] for part in shares] == [[1], [1]]
    assert all(m[0].weight == 0.0 and len(m[0].tokens) == 1 for part in shares for m in part.micro_batches)
    places: dict[tuple, set] = {}  # a group's trained samples stay in one micro-batch
    for rank, part in enumerate(assign(samples, 2, 60, skip=True, share_prompts=True)):
        for j, micro in enumerate(part.micro_batches):
            for s in micro:
                places.setdefault(tuple(s.prompt_ids), set()).add((rank, j))
    assert all(len(where) == 1 for where in places.values())


def _ragged_batch(sizes: list[int], estimator: str) -> list[list[TrainSample]]:
    """Groups of the given sizes, advantages from their own rewards (group_advantages on ragged groups)."""
    rng = np.random.default_rng(2)
    rewards = [torch.tensor(rng.integers(0, 2, size=n), dtype=torch.float32) for n in sizes]
    rewards[1] = torch.ones(sizes[1])  # an all-equal group
    groups = []
    for advantages in group_advantages(rewards, estimator):
        prompt = rng.integers(3, 64, size=int(rng.integers(3, 12))).tolist()
        groups.append(
            [
                TrainSample(
                    prompt, (t := rng.integers(3, 64, size=int(rng.integers(2, 14))).tolist()), [-2.0] * len(t), a
                )
                for a in advantages.tolist()
            ]
        )
    return groups


def _hand_gradient(model, samples: list[TrainSample], agg: str, norm_len: int) -> dict[str, torch.Tensor]:
    """The policy gradient written out: at ratio 1 each completion token adds -A * grad log p(token),
    weighted 1 / (all tokens) for token-mean, 1 / (samples * its own tokens) for seq-mean-token-mean,
    1 / (samples * norm_len) for Dr.GRPO's seq-mean-token-sum-norm (a plain forward per sample)."""
    model.zero_grad()
    total_tokens, total_seqs = sum(len(s.tokens) for s in samples), len(samples)
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.tokens])
        logits = model(input_ids=ids).logits[0, len(s.prompt_ids) - 1 : -1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(s.tokens).unsqueeze(-1)).sum()
        weight = {
            "token-mean": 1 / total_tokens,
            "seq-mean-token-mean": 1 / (total_seqs * len(s.tokens)),
            "seq-mean-token-sum-norm": 1 / (total_seqs * norm_len),
        }[agg]
        (-s.advantage * weight * logp).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "estimator, agg", [("grpo", "token-mean"), ("rloo", "seq-mean-token-mean"), ("drgrpo", "seq-mean-token-sum-norm")]
)
def test_ragged_groups_loss_equals_a_per_group_reference(tiny_model, estimator, agg):
    """Groups of 3, 4, 1 and 8 samples: the batch's gradient is the policy gradient
    written out by hand, and the sum of each group's own (with the batch's
    denominators); a group of one and an all-equal group add exactly nothing, and
    skipping and shared prompts leave the gradient as it was."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).float()
    cfg = loss_options(dataclasses.replace(TrainerConfig(), loss_agg=agg, loss_norm_len=16))
    groups = _ragged_batch([3, 4, 1, 8], estimator)
    samples = [s for g in groups for s in g]
    plain = batch_gradient(model, samples, cfg, ranks=1, max_tokens=10_000)
    (part,) = assign(samples, 1, 10_000)
    reference = {name: torch.zeros_like(g) for name, g in plain.items()}
    for i, group in enumerate(groups):
        model.zero_grad()
        loss = micro_batch_loss(model, group, cfg, False, part.num_tokens, part.num_seqs, True, defaultdict(float))
        loss.backward()
        for name, p in model.named_parameters():
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            if i in (1, 2):  # all-equal, and a group of one: advantage exactly 0, gradient exactly 0
                assert not grad.any(), (i, name)
            reference[name] += grad
    assert _max_rel_diff(plain, reference) <= 1e-5
    assert _max_rel_diff(plain, _hand_gradient(model, samples, agg, 16)) <= 1e-5
    for ranks, skip, share in [(2, True, False), (3, True, True)]:
        assert _max_rel_diff(plain, batch_gradient(model, samples, cfg, ranks, 60, skip, share)) <= 1e-5


def test_shared_prompt_forward_matches_per_sample_logprobs(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).float()
    samples = _batch(10, group_size=4)
    plain = completion_logprobs(model, samples, with_entropy=True)
    projected = []  # the LM head runs over the completion tokens' predicting positions only, no prompts or padding
    handle = model.get_output_embeddings().register_forward_hook(lambda _m, _a, out: projected.append(out.shape[:2]))
    shared = completion_logprobs(model, samples, with_entropy=True, share_prompts=True)
    handle.remove()
    assert projected == [(1, sum(len(s.tokens) for s in samples))]
    assert torch.equal(plain["predicts"], shared["predicts"])
    assert (plain["logp"] - shared["logp"]).abs().max() < 1e-5 and (
        plain["entropy"] - shared["entropy"]
    ).abs().max() < 1e-5
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    checkpointed = completion_logprobs(model, samples, share_prompts=True)
    assert (plain["logp"] - checkpointed["logp"]).abs().max() < 1e-5


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 3, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)


def test_held_out_metrics_avg_and_pass_at_k():
    def group(name, correct):
        return Group(Item(name, "q", "1", "numeric"), [], [Sample(correct=float(c)) for c in correct], 0)

    groups = [group("a/x", [1, 0, 0, 0]), group("a/x", [0, 0, 0, 0]), group("b", [1, 1, 0, 1])]
    m = held_out_metrics(groups, ["a/x", "b"], ks=[1, 2])
    assert m["eval/a/x/avg@4"] == m["eval/a/x/accuracy"] == pytest.approx(1 / 8)
    assert m["eval/a/x/pass@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["eval/b/pass@2"] == 1.0 and m["eval/b/pass@1"] == pytest.approx(0.75)
    # overall: each distribution counted once, whatever its number of held-out rows (a/x 2, b 1)
    assert m["eval/accuracy"] == m["eval/avg@4"] == pytest.approx((1 / 8 + 3 / 4) / 2)
    assert m["eval/pass@2"] == pytest.approx((0.25 + 1.0) / 2)


def _off_policy(model, samples: list[TrainSample]) -> list[TrainSample]:
    """The samples with old log-probs 0.4 nats off the model's (ratios ~0.67 and ~1.5:
        clipping and dual-clip bite), behaviour log-probs 0.1 or 0.5 below those (importance
    weights 1.1 or 1.65 around a cap of 1.2), every other one stale."""
    with torch.no_grad():
        out = completion_logprobs(model, samples)
    rng = np.random.default_rng(3)
    changed = []
    for i, (s, row, mask) in enumerate(zip(samples, out["logp"], out["predicts"])):
        old = (row[mask] + torch.tensor(rng.choice([-0.4, 0.4], size=int(mask.sum())), dtype=row.dtype)).tolist()
        behaviour = [v - d for v, d in zip(old, rng.choice([0.1, 0.5], size=len(old)))]  # weights 1.1 or 1.65
        changed.append(dataclasses.replace(s, old_logp=old, logprobs=behaviour, lag=i % 2))
    return changed


@pytest.mark.parametrize(
    "options",
    [
        {"clip_ratio_c": 3.0, "importance": ImportanceConfig(on="all", mode="mask", cap=1.2)},
        {"ratio_level": "sequence", "clip_low": 0.05, "clip_high": 0.05, "importance": ImportanceConfig(cap=1.2)},
    ],
    ids=["dual-clip-importance-mask", "gspo-importance-truncate"],
)
def test_split_and_skip_keep_the_gradient_off_policy(tiny_model, options):
    """Ratios away from 1 (several updates per batch): clipping, dual-clip, GSPO and
    importance weights all act, and the gradient still does not depend on ranks,
    micro-batches, skipping or shared prompts."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).float()
    samples = _off_policy(model, _batch(16, group_size=4))
    for s in samples[4:8]:
        s.advantage = 0.0
    cfg = loss_options(dataclasses.replace(TrainerConfig(), **options))
    plain = batch_gradient(model, samples, cfg, ranks=1, max_tokens=10_000, single=False)
    on_policy = batch_gradient(model, samples, cfg, ranks=1, max_tokens=10_000)  # ratio 1: a different update
    assert _max_rel_diff(plain, on_policy) > 1e-2
    for ranks, skip, share in [(2, True, False), (3, True, True), (2, False, True)]:
        assert _max_rel_diff(plain, batch_gradient(model, samples, cfg, ranks, 60, skip, share, single=False)) <= 1e-5


def test_kl_in_the_loss_keeps_zero_advantage_samples(tiny_model):
    """With a KL term in the loss a zero-advantage sample still has a gradient
    (its KL): skipping must keep it (batching.contributes); dropping it would change the update."""
    from transformers import AutoModelForCausalLM

    from gradus.trainer.loss import per_token

    model = AutoModelForCausalLM.from_pretrained(tiny_model).float()
    samples = _batch(16, group_size=4)
    for s in samples[4:12]:
        s.advantage = 0.0

    def ref(micro):  # a fixed reference policy: log-prob -2.5 for every token
        lengths = torch.tensor([len(s.tokens) for s in micro])
        predicts = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
        return per_token([dataclasses.replace(s, logprobs=[-2.5] * len(s.tokens)) for s in micro], "logprobs", predicts)

    cfg = loss_options(dataclasses.replace(TrainerConfig(), kl_coef=0.5, kl_kind="k3"))
    plain = batch_gradient(model, samples, cfg, ranks=1, max_tokens=10_000, ref=ref)
    assert _max_rel_diff(plain, batch_gradient(model, samples, cfg, 2, 60, skip=True, share=True, ref=ref)) <= 1e-5
    informative_only = [s for s in samples if s.advantage != 0 or s.weight == 0]
    dropped = batch_gradient(model, informative_only, cfg, ranks=1, max_tokens=10_000, ref=ref)
    assert _max_rel_diff(plain, dropped) > 1e-2  # what skipping them would have done


def test_rollout_gap_leaves_out_zero_weight_samples(tiny_model):
    """A rank's dummy pass carries one token whose vLLM log-prob belongs to another
    prompt: it must not enter train/rollout_logprob_gap."""
    from transformers import AutoModelForCausalLM

    from gradus.trainer.batching import dummy
    from gradus.trainer.loss import rollout_gap

    model = AutoModelForCausalLM.from_pretrained(tiny_model).float()
    samples = _batch(4)[:2]
    with torch.no_grad():
        out = completion_logprobs(model, samples)
    for s, row, mask in zip(samples, out["logp"], out["predicts"]):
        s.logprobs, s.weight = row[mask].tolist(), 1.0  # vLLM agrees with the trainer exactly
    padded = [*samples, dummy(samples[0])]  # its one token's "vLLM" log-prob is -2.0: a gap of ~2 if counted
    with torch.no_grad():
        out = completion_logprobs(model, padded)
    stats = {"rollout_gap_sum": 0.0, "rollout_gap_tokens": 0.0}
    rollout_gap(padded, out, stats)
    assert stats["rollout_gap_sum"] < 1e-4 and stats["rollout_gap_tokens"] == sum(len(s.tokens) for s in samples)
