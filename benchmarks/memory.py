"""Trainer memory at a real model size: peak resident memory per trainer rank
and update seconds for full fine-tuning, gradient checkpointing, LoRA, ZeRO-3
with and without zero.Init, and kl_coef > 0 (reference model).

    python benchmarks/memory.py [--only full,lora_ckpt] [--steps 1] [--hidden 1024] [--layers 24]

The model is a random-initialised Llama built here (hidden 1024, 24 layers,
intermediate 4096, vocab 32000: 0.44B parameters, float32; saved once to
--model-dir). Each configuration starts fresh trainer ranks (Ray actors with
DeepSpeed, as in a run) and trains --steps updates on one fixed batch: each rank
gets --batch sequences of --seq tokens (a 16-token prompt, the rest completion;
so a 2-rank run trains twice the sequences). "After set-up" is the rank
process's ru_maxrss before the first update (loading and engine set-up); the
phase columns are its largest private resident memory (anonymous + file pages,
sampled every 5 ms) during the engine's forward, backward and optimizer step
and during a weight sync; the peak per rank is the largest of these. Shared
memory is left out: a sync's buckets wait in the node's object store (one copy
per node, bounded by its own limit) for the rollout workers, and the pages a
rank wrote there would otherwise count as the rank's. Configurations run one
after another (each rank set is killed before the next starts). Keys a
configuration sets that this checkout's TrainerConfig lacks skip it (so the same
script measures an older checkout: PYTHONPATH=<old tree>).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time
from pathlib import Path

import numpy as np

PHASES = ("forward", "backward", "step", "sync")
LORA = {"rank": 16, "alpha": 32.0, "dropout": 0.0}
CONFIGS: dict[str, tuple[int, dict]] = {  # name -> (ranks, trainer overrides)
    "full": (1, {}),
    "full_ckpt": (1, {"gradient_checkpointing": True}),
    "lora": (1, {"lora": LORA}),
    "lora_ckpt": (1, {"lora": LORA, "gradient_checkpointing": True}),
    # ZeRO-3 with checkpointing: without it each rank's activations (~6 GiB at 4 x 256 tokens) dwarf its
    # model-state shard, and two such ranks do not fit in 24 GiB.
    "zero3_2ranks_no_init": (2, {"zero_stage": 3, "zero_init": False, "gradient_checkpointing": True}),
    "zero3_2ranks": (2, {"zero_stage": 3, "gradient_checkpointing": True}),
    "kl_full": (1, {"kl_coef": 0.1}),
    "kl_lora_ckpt": (1, {"kl_coef": 0.1, "lora": LORA, "gradient_checkpointing": True}),
    "kl_zero3_2ranks": (2, {"kl_coef": 0.1, "zero_stage": 3, "gradient_checkpointing": True}),
}


def build_model(path: Path, hidden: int, layers: int, intermediate: int, vocab: int) -> Path:
    """A random Llama saved as safetensors (reused if already there)."""
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    )
    LlamaForCausalLM(config).float().save_pretrained(path)
    return path


def batch(n: int, seq: int, vocab: int, prompt: int = 16) -> list:
    from gradus.trainer.batching import TrainSample

    rng = np.random.default_rng(0)
    return [
        TrainSample(
            rng.integers(3, vocab, prompt).tolist(),
            rng.integers(3, vocab, seq - prompt).tolist(),
            [-2.0] * (seq - prompt),
            float(a),
        )
        for a in np.resize([1.0, -1.0], n)
    ]


def install_probe(worker) -> None:
    """Runs inside a trainer rank: a thread samples private resident memory every
    5 ms and keeps each phase's peak, the phases being the engine's forward, backward and
    optimizer step, weight sync, and everything else ("other")."""
    import threading

    worker._phase, worker._phase_peaks = "other", {}

    def sample() -> None:
        with open("/proc/self/status") as status:
            while True:
                status.seek(0)
                kib = {
                    k: int(v.split()[0])
                    for k, _, v in (line.partition(":") for line in status)
                    if k in ("RssAnon", "RssFile")
                }
                worker._phase_peaks[worker._phase] = max(
                    worker._phase_peaks.get(worker._phase, 0), 1024 * sum(kib.values())
                )
                time.sleep(0.005)

    def phase(name: str, fn):
        def wrapped(*args, **kwargs):
            worker._phase = name
            try:
                return fn(*args, **kwargs)
            finally:
                worker._phase = "other"

        return wrapped

    engine = worker.engine
    engine.forward, engine.backward, engine.step = (
        phase("forward", engine.forward),
        phase("backward", engine.backward),
        phase("step", engine.step),
    )
    worker._send_buckets = phase("sync", worker._send_buckets)
    threading.Thread(target=sample, daemon=True).start()


def phase_peaks(group) -> list[dict[str, float]]:
    """Each rank's peak resident GiB per phase since install_probe."""
    import ray

    return [
        {k: v / 2**30 for k, v in p.items()}
        for p in ray.get([r.__ray_call__.remote(lambda w: dict(w._phase_peaks)) for r in group.ranks])
    ]


def peak_gib(group) -> list[float]:
    """Each rank's peak resident memory so far (ru_maxrss is in KiB on Linux)."""
    import ray

    reading = lambda _: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731
    return [kib / 2**20 for kib in ray.get([r.__ray_call__.remote(reading) for r in group.ranks])]


def measure(model: Path, ranks: int, overrides: dict, args: argparse.Namespace) -> dict:
    import ray

    from gradus.trainer.config import TrainerConfig
    from gradus.launch.run.groups import TrainerGroup

    fields = {}
    if "lora" in overrides:
        from gradus.trainer.config import LoraConfig

        fields["lora"] = LoraConfig(**overrides["lora"])
    cfg = dataclasses.replace(
        TrainerConfig(),
        threads=max(1, args.threads // ranks),
        max_tokens_per_micro_batch=args.batch * args.seq,
        **{**overrides, **fields},
    )
    samples = batch(args.batch * ranks, args.seq, args.vocab)
    group = TrainerGroup(ranks, threads=cfg.threads)
    try:
        group.setup(str(model), "float32", cfg, seed=0, total_steps=args.steps)
        after_setup = peak_gib(group)
        ray.get([r.__ray_call__.remote(install_probe) for r in group.ranks])
        seconds = [
            max(s["seconds"] for s in group.train(samples, 1, cfg.max_tokens_per_micro_batch))
            for _ in range(args.steps)
        ]
        group.weight_layout(args.bucket_mb)
        group.publish_weights()  # a weight sync's gather (ZeRO-3: piece by piece)
        phases = phase_peaks(group)
    finally:
        group.shutdown()
        for rank in group.ranks:  # wait until the rank processes are gone before the next configuration
            while True:
                try:
                    ray.get(rank.__ray_ready__.remote(), timeout=5)
                    time.sleep(1)
                except Exception:  # noqa: BLE001 - dead actor: exactly what we wait for
                    break
    peak = [max(setup, *p.values()) for setup, p in zip(after_setup, phases)]
    return {
        "after_setup": max(after_setup),
        "peak": max(peak),
        "peaks": peak,
        "seconds": seconds[-1],
        "phases": {k: max(p.get(k, 0.0) for p in phases) for k in PHASES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4, help="sequences per rank")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all (split over the ranks)")
    parser.add_argument("--bucket-mb", type=float, default=512.0, help="weight-sync bucket size")
    parser.add_argument("--model-dir", default="/tmp/gradus-bench-memory-model")
    args = parser.parse_args()

    import ray

    from gradus.trainer.config import TrainerConfig

    model = build_model(Path(args.model_dir), args.hidden, args.layers, args.intermediate, args.vocab)
    params = sum(np.prod(shape) for shape in _shapes(model))
    print(
        f"model: {params / 1e9:.2f}B parameters, float32; batch per rank {args.batch} x {args.seq} tokens; "
        f"{args.steps} step(s)",
        flush=True,
    )
    print(
        "| configuration | ranks | peak RSS per rank (GiB) | after set-up (GiB) | "
        + " | ".join(f"{p} peak" for p in PHASES)
        + " | step seconds |\n|---|---|---|---|"
        + "---|" * len(PHASES)
        + "---|",
        flush=True,
    )
    known = {f.name for f in dataclasses.fields(TrainerConfig)}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        for name in args.only.split(","):
            ranks, overrides = CONFIGS[name]
            if not set(overrides) <= known:
                print(f"| {name} | {ranks} | n/a: this checkout has no {sorted(set(overrides) - known)} |", flush=True)
                continue
            m = measure(model, ranks, overrides, args)
            per_rank = " / ".join(f"{p:.2f}" for p in m["peaks"])
            phases = " | ".join(f"{m['phases'][p]:.2f}" for p in PHASES)
            print(
                f"| {name} | {ranks} | {per_rank} | {m['after_setup']:.2f} | {phases} | {m['seconds']:.1f} |",
                flush=True,
            )
    finally:
        ray.shutdown()


def _shapes(model: Path) -> list[tuple[int, ...]]:
    from safetensors import safe_open

    shapes = []
    for file in model.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            shapes += [tuple(f.get_slice(k).get_shape()) for k in f.keys()]
    return shapes


if __name__ == "__main__":
    main()
