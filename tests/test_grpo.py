"""GRPO math against hand-computed numbers."""

import math

import pytest
import torch

from gradus.trainer.grpo import group_advantages, kl_penalty, policy_loss


def test_grpo_advantage_unbiased_std():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), "grpo", eps=0.0)
    std = math.sqrt(4 * 0.25 / 3)  # unbiased
    assert adv.tolist()[0] == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std])


def test_grpo_constant_group_is_zero_and_eps():
    assert group_advantages(torch.tensor([[2.0, 2.0, 2.0]])).abs().max() == 0
    adv = group_advantages(torch.tensor([[1.0, 3.0]]), eps=1e-6)
    assert adv.tolist()[0] == pytest.approx([-1 / (math.sqrt(2) + 1e-6), 1 / (math.sqrt(2) + 1e-6)])


def test_drgrpo_and_rloo():
    r = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    assert group_advantages(r, "drgrpo").flatten().tolist() == pytest.approx([-2.0, -1.0, 3.0, -1.0, -1.0, 2.0])
    assert group_advantages(r, "rloo").flatten().tolist() == pytest.approx([1 - 4, 2 - 3.5, 6 - 1.5, -1.5, -1.5, 3.0])


def test_kl_kinds():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    assert kl_penalty(logp, ref, "k2").tolist() == pytest.approx([0.125, 0.5])
    expected = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx(expected)


def _case():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.1, 1.0, 1.0]]))  # ratios (old = 0)
    old = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    return logp, old, adv, mask


def test_policy_loss_clipping_and_token_mean():
    logp, old, adv, mask = _case()
    # seq 0 (A=1): ratio 1.5 -> min(1.5, 1.2)=1.2; ratio 0.5 -> min(0.5, 0.8)=0.5 -> losses -1.2, -0.5
    # seq 1 (A=-2): ratio 1.1 -> min(-2.2, -2.2)=-2.2; 1.0 -> -2 ; 1.0 -> -2 -> losses 2.2, 2, 2
    loss = policy_loss(logp, old, adv, mask, 0.2, 0.2, "token-mean")
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2 + 2 + 2) / 5)


def test_policy_loss_asymmetric_clip():
    logp, old, adv, mask = _case()
    loss = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, agg="token-mean")
    assert loss.item() == pytest.approx((-1.28 - 0.5 + 2.2 + 2 + 2) / 5)


def test_policy_loss_aggregations():
    logp, old, adv, mask = _case()
    seq = policy_loss(logp, old, adv, mask, agg="seq-mean-token-mean")
    assert seq.item() == pytest.approx(((-1.7) / 2 + 6.2 / 3) / 2)
    norm = policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum-norm")
    assert norm.item() == pytest.approx((-1.7 / 3 + 6.2 / 3) / 2)
    norm10 = policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum-norm", norm_len=10)
    assert norm10.item() == pytest.approx((-1.7 / 10 + 6.2 / 10) / 2)


def test_policy_loss_has_gradient():
    logp, old, adv, mask = _case()
    logp = logp.clone().requires_grad_(True)
    policy_loss(logp, old, adv, mask).backward()
    # unclipped tokens get -A*ratio/5; clipped (seq0 tok0) get 0; masked get 0
    assert logp.grad[0].tolist() == pytest.approx([0.0, -0.5 / 5, 0.0])
    assert logp.grad[1].tolist() == pytest.approx([2 * 1.1 / 5, 2 / 5, 2 / 5])


@pytest.mark.parametrize(
    "estimator,scale", [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"), ("drgrpo", "group"), ("rloo", "group")]
)
def test_all_equal_groups_get_exactly_zero(estimator, scale):
    """Float32 rounding must not leave a residue: 8 rewards of 0.7 gave |A| = 0.06."""
    values = [0.7, 0.1, 1 / 3, 1e-3, -2.3, 123.456, 0.0, 1.0]
    for g in (2, 3, 4, 8, 16):
        rewards = torch.tensor([[v] * g for v in values], dtype=torch.float32)
        mixed = torch.cat([rewards, torch.tensor([[0.0] * (g - 1) + [1.0]])])  # batch std > 0 for "batch"
        assert group_advantages(mixed, estimator, scale=scale)[:-1].abs().max().item() == 0.0
    informative = group_advantages(torch.tensor([[0.7] * 7 + [0.2]]), estimator, scale=scale)
    assert informative.abs().max() > 0.1


def test_scale_rewards_batch_and_none():
    r = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    batch_std = torch.tensor([1.0, 0.0, 3.0, 3.0]).std().item()  # unbiased over the whole batch, as TRL
    assert group_advantages(r, "grpo", eps=0.0, scale="batch").flatten().tolist() == pytest.approx(
        [0.5 / batch_std, -0.5 / batch_std, 0, 0]
    )
    assert (
        group_advantages(r, "grpo", scale="none").flatten().tolist() == group_advantages(r, "drgrpo").flatten().tolist()
    )


def test_k3_is_clamped_like_verl():
    logp, ref = torch.tensor([0.0, 0.0, 0.0, 0.0]), torch.tensor([30.0, -30.0, 2.0, -1.0])
    expected = [10.0, 10.0, math.exp(2) - 3, math.exp(-1) + 1 - 1]  # exp(20)-21 and exp(-20)+19 both clamp to 10
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx(expected)


def test_log_ratio_clamp_keeps_the_update():
    """A log-ratio of 100 overflowed float32 (exp(89) = inf) and dropped the update."""
    logp = torch.tensor([[100.0, 0.0]], requires_grad=True)
    old, mask = torch.zeros(1, 2), torch.ones(1, 2)
    loss = policy_loss(logp, old, torch.tensor([1.0]), mask)  # ratio e^20 clipped at 1.2 for A > 0
    assert loss.item() == pytest.approx((-1.2 - 1.0) / 2)
    neg = policy_loss(logp, old, torch.tensor([-1.0]), mask)  # A < 0: the unclipped side, e^20, bounded
    assert neg.item() == pytest.approx((math.exp(20) + 1.0) / 2, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logp.grad).all()


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_loss_finite_for_any_finite_inputs(level, agg):
    torch.manual_seed(0)
    big = torch.finfo(torch.float32).max
    logp = torch.tensor([[big, -big, 0.0, 50.0], [-big, 3.0, -90.0, big]]) * torch.tensor(
        [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.5]]
    )
    logp.requires_grad_(True)
    old = torch.tensor([[-big, big, 90.0, -50.0], [big, -3.0, 0.0, -big]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    for adv, c in [([1e6, -1e6], None), ([-1e6, 1e6], 3.0)]:
        loss = policy_loss(logp, old, torch.tensor(adv), mask, agg=agg, norm_len=4, clip_ratio_c=c, ratio_level=level)
        (grad,) = torch.autograd.grad(loss, logp)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), (adv, c)


def test_dual_clip_bounds_negative_advantages():
    logp = torch.log(torch.tensor([[10.0, 0.5], [10.0, 1.0]]))
    old, mask = torch.zeros(2, 2), torch.ones(2, 2)
    adv = torch.tensor([-1.0, 2.0])
    # seq 0 (A=-1): ratio 10 -> max(10, 1.2) = 10, dual-clip min(10, 3) = 3; ratio 0.5 -> max(0.5, 0.8) = 0.8 (< 3)
    # seq 1 (A=2): ratio 10 -> -min(20, 2.4) = -2.4 (A > 0: untouched); ratio 1 -> -2
    loss = policy_loss(logp, old, adv, mask, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx((3.0 + 0.8 - 2.4 - 2.0) / 4)
    assert policy_loss(logp, old, adv, mask).item() == pytest.approx((10.0 + 0.8 - 2.4 - 2.0) / 4)


def test_sequence_level_ratio_gspo():
    logp, old, adv, mask = _case()
    # seq 0: masked mean log-ratio (log 1.5 + log 0.5) / 2 -> ratio sqrt(0.75) on both tokens; A=1, inside [0.8, 1.2]
    # seq 1: (log 1.1 + 0 + 0) / 3 -> ratio 1.1 ** (1/3); A=-2, inside the clip range
    r0, r1 = math.sqrt(0.75), 1.1 ** (1 / 3)
    loss = policy_loss(logp, old, adv, mask, agg="seq-mean-token-mean", ratio_level="sequence")
    assert loss.item() == pytest.approx((-r0 + 2 * r1) / 2)
    # GSPO's range with A = (1, 2): seq 0 keeps r0 (min(r0, 1 - 3e-4) for A > 0), seq 1 is clipped at 1 + 4e-4
    gspo = policy_loss(
        logp,
        old,
        torch.tensor([1.0, 2.0]),
        mask,
        clip_low=3e-4,
        clip_high=4e-4,
        agg="seq-mean-token-mean",
        ratio_level="sequence",
    )
    assert gspo.item() == pytest.approx((-r0 - 2 * (1 + 4e-4)) / 2)


def test_seq_mean_token_sum_and_constant_drgrpo_divisor():
    logp, old, adv, mask = _case()
    assert policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum").item() == pytest.approx((-1.7 + 6.2) / 2)
    # Dr.GRPO: the same sequences padded wider keep their loss when norm_len is the run's constant
    wide = [torch.cat([t, torch.zeros(2, 7)], dim=1) for t in (logp, old, mask)]
    narrow = policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum-norm", norm_len=16)
    assert policy_loss(
        wide[0], wide[1], adv, wide[2], agg="seq-mean-token-sum-norm", norm_len=16
    ).item() == pytest.approx(narrow.item())


def test_loss_options_defaults():
    from gradus.trainer.grpo import loss_options

    from gradus.trainer.config import TrainerConfig

    token = loss_options(TrainerConfig(ratio_level="token", clip_low=None, clip_high=None, loss_agg=None))
    assert (token.clip_low, token.clip_high, token.agg) == (0.2, 0.2, "token-mean")
    seq = loss_options(TrainerConfig(ratio_level="sequence", clip_low=None, clip_high=0.1, loss_agg=None))
    assert (seq.clip_low, seq.clip_high, seq.agg) == (3e-4, 0.1, "seq-mean-token-mean")
    with pytest.raises(ValueError, match="loss_norm_len"):
        loss_options(TrainerConfig(loss_agg="seq-mean-token-sum-norm", loss_norm_len=None))


def test_dual_clip_gradient():
    """d loss / d logp per token: a dual-clipped token (A < 0, ratio past clip_ratio_c) has none; an unclipped one
    has -A * ratio / (number of tokens)."""
    logp = torch.log(torch.tensor([[10.0, 0.5], [10.0, 1.0]])).requires_grad_()
    adv, mask = torch.tensor([-1.0, 2.0]), torch.ones(2, 2)
    policy_loss(logp, torch.zeros(2, 2), adv, mask, clip_ratio_c=3.0).backward()
    # seq 0: ratio 10 (dual-clipped: constant 3) -> 0; ratio 0.5 clipped at 0.8 (the max picks the clipped side) -> 0
    # seq 1: ratio 10 clipped at 1.2 (A > 0) -> 0; ratio 1 unclipped -> -A * ratio / 4 = -0.5
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.0, -0.5])


def test_gspo_gradient_spreads_the_sequence_ratio():
    """GSPO: every token of a sequence shares d ratio_seq / d logp_t = ratio_seq / |seq|; under seq-mean-token-mean
    (each sequence's token mean of -A * ratio_seq is -A * ratio_seq) each token's gradient is
    -A * ratio_seq / |seq| / (number of sequences)."""
    logp, old, adv, mask = _case()
    logp = logp.clone().requires_grad_()
    policy_loss(logp, old, adv, mask, agg="seq-mean-token-mean", ratio_level="sequence").backward()
    r0, r1 = math.sqrt(0.75), 1.1 ** (1 / 3)
    grad = logp.grad
    assert grad[0, :2].tolist() == pytest.approx([-1.0 * r0 / 2 / 2] * 2)  # seq 0: 2 tokens, A = 1
    assert grad[1, :3].tolist() == pytest.approx([2.0 * r1 / 3 / 2] * 3)  # seq 1: 3 tokens, A = -2
    assert grad[mask == 0].abs().sum().item() == 0.0


def test_importance_weights_truncate_versus_mask():
    """A stale token whose pi_proximal / pi_behaviour is 4 (cap 2): truncate weighs it 2, mask drops it (0); a
    token at 0.5 keeps 0.5 either way; fresh tokens keep exactly 1."""
    from gradus.trainer.batching import TrainSample
    from gradus.trainer.config import ImportanceConfig, TrainerConfig
    from gradus.trainer.grpo import loss_options
    from gradus.trainer.loss import importance_weights

    proximal = torch.log(torch.tensor([[4.0, 0.5], [1.0, 1.0]]))
    micro = [TrainSample([1], [2, 3], [0.0, 0.0], 1.0, lag=1), TrainSample([1], [2, 3], [0.0, 0.0], 1.0, lag=0)]
    predicts, mask = torch.ones(2, 2, dtype=torch.bool), torch.ones(2, 2)
    weights = {}
    for mode in ("truncate", "mask"):
        opts = loss_options(TrainerConfig(importance=ImportanceConfig(mode=mode, cap=2.0)))
        stats = dict.fromkeys(("stale_tokens", "iw_tokens", "iw_sum", "iw_capped", "iw_max"), 0.0)
        weights[mode] = importance_weights(opts, micro, proximal, predicts, mask, stats).tolist()
        assert stats["iw_capped"] == 1.0 and stats["iw_tokens"] == 2.0 and stats["iw_max"] == pytest.approx(4.0)
    assert weights["truncate"] == [pytest.approx([2.0, 0.5]), [1.0, 1.0]]
    assert weights["mask"] == [pytest.approx([0.0, 0.5]), [1.0, 1.0]]


@pytest.mark.parametrize("estimator", ["grpo", "drgrpo", "rloo"])
def test_ragged_groups_equal_each_group_alone(estimator):
    """A group size per prompt: a list of 1-D tensors gives each group what it alone gives;
    a group of one and an all-equal group get exactly 0."""
    groups = [
        torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0]),
        torch.tensor([0.7]),
        torch.tensor([0.7] * 3),
        torch.tensor([1.0, 0.0]),
    ]
    out = group_advantages(groups, estimator)
    assert [tuple(a.shape) for a in out] == [(5,), (1,), (3,), (2,)]
    # by hand, each group with its own n: mean 0.6 and unbiased std sqrt(0.3) for n = 5; 0.5 and sqrt(0.5) for n = 2
    expected = {
        "grpo": ([0.4 / 0.3**0.5] * 3, [-0.6 / 0.3**0.5] * 2, [0.5 / 0.5**0.5, -0.5 / 0.5**0.5]),
        "drgrpo": ([0.4] * 3, [-0.6] * 2, [0.5, -0.5]),
        "rloo": ([1 - 2 / 4] * 3, [0 - 3 / 4] * 2, [1.0, -1.0]),  # r minus the mean of the n - 1 others
    }[estimator]
    right, wrong, pair = expected
    assert out[0].tolist() == pytest.approx([right[0], wrong[0], wrong[1], right[1], right[2]], abs=1e-5)
    assert out[3].tolist() == pytest.approx(pair, abs=1e-5)
    assert out[1].tolist() == [0.0] and out[2].tolist() == [0.0] * 3


def test_ragged_batch_scale_uses_the_batch_std():
    groups = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 0.0])]
    out = group_advantages(groups, "grpo", scale="batch")
    std = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64).std()
    assert out[1].tolist() == pytest.approx([0.5 / (std.item() + 1e-6), -0.5 / (std.item() + 1e-6)])
