"""The GRPO loss of one micro-batch on a model: completion log-probs from one
forward, then the clipped, importance-weighted, aggregated loss of
trainer/grpo.py. Model-level (no DeepSpeed, no Ray), so tests can compare the
gradients of different batch splits on a plain Hugging Face model."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from trainer.grpo import LOG_RATIO_CLAMP, aggregate, kl_penalty, token_policy_loss


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def per_token(samples: Sequence[dict], key: str, predicts: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-completion-token values (e.g. vLLM log-probs) laid out
    like the log-probs [B, T]: masked_scatter fills row-major, in sample order."""
    values = torch.tensor([v for s in samples for v in s[key]], dtype=torch.float32, device=predicts.device)
    return torch.zeros(predicts.shape, device=predicts.device).masked_scatter(predicts, values)


def completion_logprobs(model: Any, samples: Sequence[dict], with_entropy: bool = False) -> dict[str, torch.Tensor]:
    """Log-probs [B, T] of each sample's completion tokens, the positions that
    predict them ("predicts", bool [B, T]; T = longest sequence - 1) and optionally
    per-token entropy. `logits_to_keep` skips the vocabulary projection (the
    costliest layer of a small model) over the prompt; the call goes through the
    model's (or DeepSpeed engine's) own forward, which ZeRO-3 needs."""
    sequences = [s["prompt_ids"] + s["tokens"] for s in samples]
    device = model.device
    input_ids = _pad(sequences, 0).to(device)  # [B, L]
    attention = _pad([[1] * len(q) for q in sequences], 0).to(device)
    predicts = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, dtype=torch.bool)  # [B, L-1]
    for i, s in enumerate(samples):
        start = len(s["prompt_ids"]) - 1  # the position that predicts the first completion token
        predicts[i, start : start + len(s["tokens"])] = True
    predicts = predicts.to(device)
    first = min(len(s["prompt_ids"]) for s in samples) - 1
    keep = torch.arange(first, input_ids.shape[1] - 1, device=device)
    logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False, logits_to_keep=keep).logits.float()  # [B, K, V]
    kept = predicts[:, first:]  # [B, K]
    selected = logits[kept]  # [N, V]
    norm = torch.logsumexp(selected, dim=-1)  # [N]
    picked = selected.gather(-1, input_ids[:, 1:][predicts].unsqueeze(-1)).squeeze(-1) - norm  # [N]
    out = {"logp": torch.zeros(predicts.shape, dtype=picked.dtype).masked_scatter(predicts, picked), "predicts": predicts}
    if with_entropy:
        with torch.no_grad():
            entropy = norm - (torch.softmax(selected, dim=-1) * selected).sum(-1)  # [N]
        out["entropy"] = torch.zeros(predicts.shape, device=device).masked_scatter(predicts, entropy)
    return out


def rollout_gap(micro: Sequence[dict], out: dict[str, torch.Tensor], stats: dict[str, float]) -> None:
    """Sum of |trainer - vLLM| log-prob over tokens: exposes rollout/trainer mismatch."""
    vllm = per_token(micro, "logprobs", out["predicts"])
    stats["rollout_gap_sum"] += float(((out["logp"].detach() - vllm).abs() * out["predicts"]).sum())
    stats["rollout_gap_tokens"] += float(out["predicts"].sum())


def importance_weights(
    importance: dict[str, Any], micro: Sequence[dict], proximal: torch.Tensor, predicts: torch.Tensor, mask: torch.Tensor, stats: dict[str, float]
) -> torch.Tensor:
    """Per-token weights pi_proximal / pi_behaviour, behaviour being vLLM's
    log-probs at generation. Decoupled PPO (AReaL) for stale samples (the clipped
    ratio is taken against the proximal policy, the weights before this update);
    with importance.on=all every token, which corrects rollout/trainer mismatch
    (truncated importance sampling). Beyond importance.cap a weight is truncated
    to the cap ("truncate") or the token dropped ("mask", AReaL's
    behav_imp_weight_cap). Other tokens: exactly 1."""
    behaviour = per_token(micro, "logprobs", predicts)
    raw = torch.exp((proximal.detach() - behaviour).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    stale = torch.tensor([s.get("lag", 0) > 0 for s in micro], device=predicts.device).unsqueeze(-1) & (mask > 0)
    chosen = (mask > 0) if importance["on"] == "all" else stale
    cap, seen = importance["cap"], raw[chosen]
    weighted = raw.clamp(max=cap) if importance["mode"] == "truncate" else torch.where(raw > cap, torch.zeros_like(raw), raw)
    stats["stale_tokens"] += float(stale.sum())
    stats["iw_tokens"] += float(chosen.sum())
    stats["iw_sum"] += float(weighted[chosen].sum())
    stats["iw_capped"] += float((seen > cap).sum())
    stats["iw_max"] = max(stats["iw_max"], float(seen.max()) if seen.numel() else 0.0)
    return torch.where(chosen, weighted, torch.ones_like(raw))


def micro_batch_loss(
    model: Any,
    micro: Sequence[dict],
    cfg: dict[str, Any],
    num_tokens: int,
    num_seqs: int,
    single: bool,
    stats: dict[str, float],
    ref_logprobs: Callable[[Sequence[dict]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """This micro-batch's share of the global-batch loss (a scalar with
    gradients; denominators are the whole mini-batch's over all ranks, Dr.GRPO's
    divisor a constant of the run). `single`: one update per batch, so the
    forward itself is at the sampling weights and is its own old policy. With
    `ref_logprobs`, a KL term against the reference policy joins the loss.
    Statistics of finite losses are added to `stats`."""
    out = completion_logprobs(model, micro, with_entropy=True)
    logp, predicts = out["logp"], out["predicts"]  # [B, T]
    mask = predicts.float() * torch.tensor([float(s.get("weight", 1.0) > 0) for s in micro], device=logp.device).unsqueeze(-1)
    old = logp.detach() if single else per_token(micro, "old_logp", predicts)
    if single:
        rollout_gap(micro, out, stats)
    advantages = torch.tensor([s["advantage"] for s in micro], dtype=logp.dtype, device=logp.device)  # [B]
    losses, clip_mask = token_policy_loss(
        logp, old, advantages, cfg["clip_low"], cfg["clip_high"], cfg["clip_ratio_c"], cfg["ratio_level"], predicts
    )
    if cfg["importance"]["on"] == "all" or any(s.get("lag", 0) for s in micro):
        losses = losses * importance_weights(cfg["importance"], micro, old, predicts, mask, stats)

    def reduce(values: torch.Tensor) -> torch.Tensor:
        return aggregate(values, mask, cfg["loss_agg"], norm_len=cfg["loss_norm_len"], num_tokens=num_tokens, num_seqs=num_seqs)

    loss = reduce(losses)
    kl = reduce(kl_penalty(logp, ref_logprobs(micro), cfg["kl_kind"])) if ref_logprobs is not None else None
    if kl is not None:
        loss = loss + cfg["kl_coef"] * kl
    if torch.isfinite(loss):
        stats["loss"] += loss.item()
        stats["kl"] += kl.item() if kl is not None else 0.0
        stats["clip_tokens"] += float((clip_mask * mask).sum())
        stats["tokens"] += float(mask.sum())
        stats["entropy_sum"] += float((out["entropy"] * mask).sum())
    return loss
