"""The GRPO loss of one micro-batch on a model: completion log-probs from one
forward, then the clipped, importance-weighted, aggregated loss of
trainer/grpo.py. Model-level (no DeepSpeed, no Ray), so tests can compare the
gradients of different batch splits on a plain Hugging Face model."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from gradus.trainer.batching import TrainSample
from gradus.trainer.grpo import LOG_RATIO_CLAMP, LossOptions, aggregate, kl_penalty, token_policy_loss


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def per_token(samples: Sequence[TrainSample], key: str, predicts: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-completion-token values (e.g. vLLM log-probs) laid out
    like the log-probs [B, T]: masked_scatter fills row-major, in sample order."""
    values = torch.tensor([v for s in samples for v in getattr(s, key)], dtype=torch.float32, device=predicts.device)
    return torch.zeros(predicts.shape, device=predicts.device).masked_scatter(predicts, values)


@dataclass
class _Row:
    """One forward row: a prompt, then one or more completions (segments)."""

    prompt: list[int]
    segments: list[int] = field(default_factory=list)  # sample indices, in order
    starts: list[int] = field(default_factory=list)  # where each segment begins in the row

    def length(self, samples: Sequence[TrainSample]) -> int:
        return len(self.prompt) + sum(len(samples[i].tokens) for i in self.segments)


def _rows(samples: Sequence[TrainSample], share_prompts: bool) -> list[_Row]:
    """One row per sample, or with share_prompts one per distinct prompt holding
    every completion of it (a group's samples: the prompt is encoded once)."""
    rows: dict[Any, _Row] = {}
    for i, s in enumerate(samples):
        key = tuple(s.prompt_ids) if share_prompts else i
        row = rows.setdefault(key, _Row(list(s.prompt_ids)))
        row.starts.append(row.length(samples))
        row.segments.append(i)
    return list(rows.values())


def _shared_prompt_mask(
    rows: list[_Row], samples: Sequence[TrainSample], width: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive attention mask [R, 1, L, L] and position ids [R, L] for rows that
    hold several completions: each completion sees the prompt and, causally,
    itself (not the other completions), at the positions it has in its own
    prompt + completion sequence. Padding positions see only themselves."""
    allowed = torch.zeros(len(rows), width, width, dtype=torch.bool)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for r, row in enumerate(rows):
        p = len(row.prompt)
        allowed[r, :p, :p] = causal[:p, :p]
        positions[r, :p] = torch.arange(p)
        end = p
        for i, start in zip(row.segments, row.starts):
            end = start + len(samples[i].tokens)
            allowed[r, start:end, :p] = True
            allowed[r, start:end, start:end] = causal[: end - start, : end - start]
            positions[r, start:end] = torch.arange(p, p + end - start)
        pad = torch.arange(end, width)
        allowed[r, pad, pad] = True
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1), positions


SHARED_PROMPT_BACKENDS = ("sdpa", "eager")  # attention implementations that take an arbitrary 4D mask


def prompt_sharing(model: Any, wanted: bool, say: bool = True) -> bool:
    """Whether the shared-prompt forward is exact for this model (`say`: print
    why not, once). It needs an attention backend that takes an arbitrary 4D
    mask, and no sliding-window layers (a 4D mask replaces their window)."""
    config = model.config
    backend = getattr(config, "_attn_implementation", None)
    sliding = getattr(config, "sliding_window", None) and (
        getattr(config, "use_sliding_window", True)
        or "sliding_attention" in (getattr(config, "layer_types", None) or [])
    )
    reason = (
        f"attention backend {backend!r} cannot take its 4D mask (supported: {', '.join(SHARED_PROMPT_BACKENDS)})"
        if backend not in SHARED_PROMPT_BACKENDS
        else "sliding-window attention layers would lose their window"
        if sliding
        else ""
    )
    if wanted and reason and say:
        print(f"gradus: trainer.share_prompts is off: {reason}", flush=True)
    return wanted and not reason


def completion_logprobs(
    model: Any, samples: Sequence[TrainSample], with_entropy: bool = False, share_prompts: bool = False
) -> dict[str, torch.Tensor]:
    """Log-probs [B, T] of each sample's completion tokens (T = the longest
    completion; "predicts" marks the real ones, bool [B, T]) and optionally
    per-token entropy.

    One row per sample, or with `share_prompts` one per distinct prompt: the
    prompt goes through the model once and each completion attends to it and to
    itself (a 4D mask, per-completion position ids), the shared-prefix forward
    of "Prefix Grouper"; log-probs and gradients equal the per-sample forward's
    to float tolerance. Only the positions that predict a completion token go
    through the vocabulary projection (`_predicting_positions`): no logits for
    prompts or padding, and no [rows, positions, vocabulary] tensor. The call
    goes through the model's (or DeepSpeed engine's) own forward, which ZeRO-3
    needs."""
    device = model.device
    rows = _rows(samples, share_prompts)
    input_ids = _pad([row.prompt + [t for i in row.segments for t in samples[i].tokens] for row in rows], 0)  # [R, L]
    width = input_ids.shape[1]
    if any(len(row.segments) > 1 for row in rows):
        attention, positions = _shared_prompt_mask(rows, samples, width, next(model.parameters()).dtype)
        extra = {"attention_mask": attention.to(device), "position_ids": positions.to(device)}
    else:
        extra = {"attention_mask": _pad([[1] * row.length(samples) for row in rows], 0).to(device)}
    # For every completion token, in sample order: its row and the position that predicts it.
    row_of: list[list[int]] = [[] for _ in samples]
    pos_of: list[list[int]] = [[] for _ in samples]
    for r, row in enumerate(rows):
        for i, start in zip(row.segments, row.starts):
            n = len(samples[i].tokens)
            row_of[i] = [r] * n
            pos_of[i] = ([len(row.prompt) - 1] + list(range(start, start + n - 1)))[:n]
    rows_idx = torch.tensor([r for rs in row_of for r in rs], dtype=torch.long, device=device)
    pos_idx = torch.tensor([q for qs in pos_of for q in qs], dtype=torch.long, device=device)
    with _predicting_positions(model, rows_idx, pos_idx):
        logits = model(input_ids=input_ids.to(device), use_cache=False, logits_to_keep=0, **extra).logits.float()[
            0
        ]  # [N, V]
    targets = torch.tensor([t for s in samples for t in s.tokens], dtype=torch.long, device=device)  # [N]
    norm = torch.logsumexp(logits, dim=-1)  # [N]; more accurate than log_softmax's on CPU (~4e-6 against ~4e-5)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - norm  # [N]
    lengths = torch.tensor([len(s.tokens) for s in samples])
    predicts = (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).to(device)  # [B, T]
    out = {
        "logp": torch.zeros(predicts.shape, dtype=picked.dtype, device=device).masked_scatter(predicts, picked),
        "predicts": predicts,
    }
    if with_entropy:
        with torch.no_grad():
            entropy = norm - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # [N]
        out["entropy"] = torch.zeros(predicts.shape, device=device).masked_scatter(predicts, entropy)
    return out


@contextlib.contextmanager
def _predicting_positions(model: Any, rows_idx: torch.Tensor, pos_idx: torch.Tensor) -> Iterator[None]:
    """While inside, the model's output projection (the LM head) sees only the
    hidden states at (rows_idx, pos_idx), as one row [1, N, H]: it runs inside
    the model's own forward (ZeRO-3 gathers its weights there), over the N
    positions whose logits are used rather than every position of every row."""

    def select(_module: Any, args: tuple) -> tuple:
        return (args[0][rows_idx, pos_idx].unsqueeze(0), *args[1:])

    handle = getattr(model, "module", model).get_output_embeddings().register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def rollout_gap(micro: Sequence[TrainSample], out: dict[str, torch.Tensor], stats: dict[str, float]) -> None:
    """Sum of |trainer - vLLM| log-prob over the tokens of trained samples: exposes
    rollout/trainer mismatch. Zero-weight samples are left out: a rank's dummy
    pass carries one token of a sample whose vLLM log-prob belongs to the full prompt."""
    vllm = per_token(micro, "logprobs", out["predicts"])
    trained = torch.tensor([s.weight > 0 for s in micro], device=out["predicts"].device).unsqueeze(-1)
    mask = out["predicts"] & trained
    stats["rollout_gap_sum"] += float(((out["logp"].detach() - vllm).abs() * mask).sum())
    stats["rollout_gap_tokens"] += float(mask.sum())


def importance_weights(
    opts: LossOptions,
    micro: Sequence[TrainSample],
    proximal: torch.Tensor,
    predicts: torch.Tensor,
    mask: torch.Tensor,
    stats: dict[str, float],
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
    stale = torch.tensor([s.lag > 0 for s in micro], device=predicts.device).unsqueeze(-1) & (mask > 0)
    chosen = (mask > 0) if opts.importance_on == "all" else stale
    cap, seen = opts.importance_cap, raw[chosen]
    weighted = (
        raw.clamp(max=cap) if opts.importance_mode == "truncate" else torch.where(raw > cap, torch.zeros_like(raw), raw)
    )
    stats["stale_tokens"] += float(stale.sum())
    stats["iw_tokens"] += float(chosen.sum())
    stats["iw_sum"] += float(weighted[chosen].sum())
    stats["iw_capped"] += float((seen > cap).sum())
    stats["iw_max"] = max(stats["iw_max"], float(seen.max()) if seen.numel() else 0.0)
    return torch.where(chosen, weighted, torch.ones_like(raw))


def micro_batch_loss(
    model: Any,
    micro: Sequence[TrainSample],
    opts: LossOptions,
    share_prompts: bool,
    num_tokens: int,
    num_seqs: int,
    single: bool,
    stats: dict[str, float],
    ref_logprobs: Callable[[Sequence[TrainSample]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """This micro-batch's share of the global-batch loss (a scalar with
    gradients; denominators are the whole mini-batch's over all ranks, Dr.GRPO's
    divisor a constant of the run). `single`: one update per batch, so the
    forward itself is at the sampling weights and is its own old policy. With
    `ref_logprobs`, a KL term against the reference policy joins the loss.
    Statistics of finite losses are added to `stats`."""
    out = completion_logprobs(model, micro, with_entropy=True, share_prompts=share_prompts)
    logp, predicts = out["logp"], out["predicts"]  # [B, T]
    mask = predicts.float() * torch.tensor([float(s.weight > 0) for s in micro], device=logp.device).unsqueeze(-1)
    old = logp.detach() if single else per_token(micro, "old_logp", predicts)
    if single:
        rollout_gap(micro, out, stats)
    advantages = torch.tensor([s.advantage for s in micro], dtype=logp.dtype, device=logp.device)  # [B]
    losses, clip_mask = token_policy_loss(
        logp, old, advantages, opts.clip_low, opts.clip_high, opts.clip_ratio_c, opts.ratio_level, predicts
    )
    if opts.importance_on == "all" or any(s.lag for s in micro):
        losses = losses * importance_weights(opts, micro, old, predicts, mask, stats)

    def reduce(values: torch.Tensor) -> torch.Tensor:
        return aggregate(values, mask, opts.agg, norm_len=opts.norm_len, num_tokens=num_tokens, num_seqs=num_seqs)

    loss = reduce(losses)
    kl = reduce(kl_penalty(logp, ref_logprobs(micro), opts.kl_kind)) if ref_logprobs is not None else None
    if kl is not None:
        loss = loss + opts.kl_coef * kl
    if torch.isfinite(loss):
        stats["loss"] += loss.item()
        stats["kl"] += kl.item() if kl is not None else 0.0
        stats["clip_tokens"] += float((clip_mask * mask).sum())
        stats["tokens"] += float(mask.sum())
        stats["entropy_sum"] += float((out["entropy"] * mask).sum())
    return loss
