"""First run on a new GPU machine: does gradus's CUDA path work here?

    python benchmarks/gpu_smoke.py                   # tier A, then tier B if vLLM and Ray are installed
    python benchmarks/gpu_smoke.py --tier A          # DeepSpeed only (no Ray, no vLLM): ~5 minutes on one H100
    python benchmarks/gpu_smoke.py --device cpu --tier A   # the same checks on CPU (what CI runs)

Tier A needs torch, transformers, peft and DeepSpeed (a pure-Python wheel: carry
it to a machine without network). It drives one trainer rank in this process on
a tiny random model built here. Tier B adds vLLM and Ray: in-place weight
reloads, then a colocated 2-step bf16 run and its resume. One line per check,
most important first; the exit status is the number of failed checks.

Expected output on a working machine (numbers and [seconds] vary; the seconds
are guesses until the first GPU run is recorded in BENCHMARKS.md):
    PASS A1 bf16 update keeps fp32 master weights (master moved as in fp32: rel diff 2.1e-03) [9 s]
    PASS A2 ZeRO-3 on one rank keeps bf16 parameters, fp32 master (step finite) [6 s]
    PASS A3 optimizer offload: DeepSpeedCPUAdam built and stepped (41.2 s, incl. the one-off build) [42 s]
    PASS A4 LoRA + gradient checkpointing: only adapters train (step finite) [5 s]
    PASS A5 GRPO loss under bf16: finite loss and gradients (incl. dual-clip, GSPO) [3 s]
    PASS A6 checkpoint + resume: Adam's step on the parameter's device, next update equal (rel 0.0e+00) [8 s]
    PASS B1 vLLM in-place reload changes outputs and restores them, also across sleep/wake [60 s]
    PASS B2 colocated bf16 run: 2 steps, log-prob gap 1.9e-02, grad norm finite; --resume continues at step 3 [150 s]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.tiny_model


def _samples(seed: int = 0, n: int = 8) -> list:
    import numpy as np

    from gradus.trainer.batching import TrainSample

    rng = np.random.default_rng(seed)
    return [
        TrainSample(
            rng.integers(3, 60, 6).tolist(),
            (t := rng.integers(3, 60, 8).tolist()),
            [-2.0] * len(t),
            float(rng.normal()),
        )
        for _ in range(n)
    ]


class Rank:
    """One trainer rank in this process (no Ray): what a TrainerGroup of one runs."""

    def __init__(self, model: Path, device: str, dtype: str, **settings) -> None:
        from gradus.trainer.batching import assign
        from gradus.trainer.config import TrainerConfig
        from gradus.trainer.rank_setup import free_port
        from gradus.trainer.worker import TrainerWorker

        self.assign = assign
        self.cfg = dataclasses.replace(TrainerConfig(), threads=4, max_tokens_per_micro_batch=512, **settings)
        self.worker = TrainerWorker(0, 1, threads=4, device=device)
        self.worker.setup(("127.0.0.1", free_port()), str(model), dtype, self.cfg, seed=0, total_steps=10)

    def step(self, seed: int = 0) -> dict:
        shares = self.assign(_samples(seed), 1, self.cfg.max_tokens_per_micro_batch)
        return self.worker.train(shares)

    def master(self) -> dict:
        return {k: v for k, v in self.worker.checkpoint_state().items() if k.startswith("param/")}


def _rel(a: dict, b: dict) -> float:
    import numpy as np

    scale = max(float(np.abs(v).max()) for v in b.values())
    return max(float(np.abs(a[k] - b[k]).max()) for k in b) / max(scale, 1e-12)


def a1_bf16_master(model: Path, device: str) -> str:
    moved = {}
    for dtype in ("float32", "bfloat16"):
        rank = Rank(model, device, dtype, optimizer="sgd", lr=1e-2, grad_clip=0.0, zero_stage=0)
        before = rank.master()
        rank.step()
        after = rank.master()
        moved[dtype] = {k: after[k] - before[k] for k in after}
        if dtype == "bfloat16":
            params = [p.dtype for p in rank.worker.engine.module.parameters()]
            assert set(map(str, params)) == {"torch.bfloat16"}, f"module parameters are {set(params)}"
    rel = _rel(moved["bfloat16"], moved["float32"])
    assert rel < 0.05, f"the bf16 run's master weights moved differently from fp32's (rel diff {rel:.2e})"
    return f"bf16 update keeps fp32 master weights (master moved as in fp32: rel diff {rel:.1e})"


def a2_zero3_bf16(model: Path, device: str) -> str:
    rank = Rank(model, device, "bfloat16", zero_stage=3)
    stats = rank.step()
    dtypes = {str(getattr(p, "ds_tensor", p).dtype) for p in rank.worker.engine.module.parameters()}
    master = {str(t.dtype) for t in rank.worker.engine.optimizer.fp32_partitioned_groups_flat}
    assert dtypes == {"torch.bfloat16"} and master == {"torch.float32"}, f"parameters {dtypes}, master {master}"
    assert math.isfinite(stats["grad_norm"]), stats
    return "ZeRO-3 on one rank keeps bf16 parameters, fp32 master (step finite)"


def a3_offload(model: Path, device: str) -> str:
    if device != "cuda":
        return "SKIP optimizer offload needs CUDA"
    start = time.perf_counter()
    rank = Rank(model, device, "bfloat16", zero_stage=2, offload={"optimizer": "cpu", "params": "none"})
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    assert isinstance(rank.worker.engine.optimizer.optimizer, DeepSpeedCPUAdam)
    assert math.isfinite(rank.step()["grad_norm"])
    seconds = time.perf_counter() - start
    return f"optimizer offload: DeepSpeedCPUAdam built and stepped ({seconds:.1f} s, incl. the one-off build)"


def a4_lora_checkpointing(model: Path, device: str) -> str:
    from gradus.trainer.config import LoraConfig

    rank = Rank(
        model,
        device,
        "bfloat16",
        lora=LoraConfig(rank=4, target_modules=["q_proj", "v_proj"]),
        gradient_checkpointing=True,
    )
    trainable = {n for n, p in rank.worker.engine.module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable), sorted(trainable)[:3]
    assert math.isfinite(rank.step()["grad_norm"])
    return "LoRA + gradient checkpointing: only adapters train (step finite)"


def a5_loss_bf16(model: Path, device: str) -> str:
    import torch

    from gradus.trainer.grpo import policy_loss

    logp = (torch.randn(4, 16, device=device) - 2).to(torch.bfloat16).requires_grad_()
    old = (logp.detach().float() + 0.3 * torch.randn(4, 16, device=device)).to(torch.bfloat16)
    adv, mask = torch.randn(4, device=device).to(torch.bfloat16), torch.ones(4, 16, device=device)
    for kwargs in ({}, {"clip_ratio_c": 3.0}, {"ratio_level": "sequence", "agg": "seq-mean-token-mean"}):
        logp.grad = None
        loss = policy_loss(logp, old, adv, mask, **kwargs)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logp.grad).all(), kwargs
    return "GRPO loss under bf16: finite loss and gradients (incl. dual-clip, GSPO)"


def a6_checkpoint_resume(model: Path, device: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        first = Rank(model, device, "bfloat16", lr=1e-3)
        first.step(0)
        first.worker.save_checkpoint(tmp)
        first.step(1)
        expected = first.master()
        second = Rank(model, device, "bfloat16", lr=1e-3)
        second.worker.load_checkpoint(tmp)
        optimizer = getattr(second.worker.engine.optimizer, "optimizer", second.worker.engine.optimizer)
        for param, state in optimizer.state.items():
            step = state.get("step")
            if hasattr(step, "device") and optimizer.defaults.get("fused"):
                assert step.device == param.device, f"Adam's step on {step.device}, its parameter on {param.device}"
        second.step(1)
        rel = _rel(second.master(), expected)
    assert rel < 1e-3, f"the resumed update differs (rel {rel:.1e})"
    return f"checkpoint + resume: Adam's step on the parameter's device, next update equal (rel {rel:.1e})"


def b1_vllm_reload(model: Path, device: str) -> str:
    import torch
    from safetensors.torch import load_file

    from gradus.curriculum.items import Item
    from gradus.rollout.worker import RolloutWorker, engine_env

    os.environ.update(engine_env(4, 1.0))  # the engine in this process (its reload takes a function), as in a run
    if device == "cuda":
        engine = {"dtype": "bfloat16", "enable_sleep_mode": True, "gpu_memory_utilization": 0.3}
    else:  # vLLM-CPU: float32, a 1 GiB KV cache
        engine = {"dtype": "float32"}
    worker = RolloutWorker(str(model), max_model_len=256, **engine)
    items = [Item("d", "What is 1 + 2?", "3", "numeric")]

    def text(worker: RolloutWorker) -> list[int]:
        groups, _ = worker.generate(items, n=1, max_tokens=8, temperature=0.0)
        return groups[0].samples[0].tokens

    weights = load_file(str(model / "model.safetensors"))
    original = text(worker)
    worker.load_weights([(k, v * 0 if v.dim() == 2 else v) for k, v in weights.items()], 1)
    changed = text(worker)
    worker.load_weights(list(weights.items()), 2)
    assert changed != original and text(worker) == original, (original, changed)
    if device == "cuda":
        worker.sleep(level=2)
        torch.cuda.empty_cache()
        worker.wake_up()
        worker.load_weights(list(weights.items()), 3)
        assert text(worker) == original, "outputs changed across sleep/wake"
    worker.llm.llm_engine.engine_core.shutdown()  # the engine and its GPU memory go before B2 starts a run of its own
    del worker
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    across = ", also across sleep/wake" if device == "cuda" else " (sleep/wake is CUDA-only)"
    return f"vLLM in-place reload changes outputs and restores them{across}"


def b2_colocated_run(model: Path, device: str) -> str:
    import json

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        base = [
            sys.executable,
            "-m",
            "gradus.launch.cli",
            "train",
            "configs/default.yaml",
            f"model.path={model}",
            f"run.run_dir={run}",
            "run.checkpoint_every=2",
            "wandb.mode=disabled",
            "eval.every=0",
            f"model.dtype={'bfloat16' if device == 'cuda' else 'float32'}",
            "cluster.colocate=true",
            "rollout.max_tokens=32",
            "rollout.prompts_per_step=4",
        ]
        for steps, extra in ((2, []), (3, ["--resume"])):
            done = subprocess.run([*base, f"run.steps={steps}", *extra], cwd=ROOT, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-2000:]
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    gap = max(m.get("train/rollout_logprob_gap", 0.0) for m in metrics)
    assert [m["step"] for m in metrics] == [0, 1, 2] and gap < 0.1, (metrics[-1], gap)
    assert all(math.isfinite(m.get("train/grad_norm", 0.0)) for m in metrics)
    dtype = "bf16" if device == "cuda" else "float32"
    return f"colocated {dtype} run: 2 steps, log-prob gap {gap:.1e}, grad norm finite; --resume continues at step 3"


TIER_A: list[tuple[str, Callable[[Path, str], str]]] = [
    ("A1", a1_bf16_master),
    ("A2", a2_zero3_bf16),
    ("A3", a3_offload),
    ("A4", a4_lora_checkpointing),
    ("A5", a5_loss_bf16),
    ("A6", a6_checkpoint_resume),
]
TIER_B: list[tuple[str, Callable[[Path, str], str]]] = [("B1", b1_vllm_reload), ("B2", b2_colocated_run)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", choices=["A", "B", "all"], default="all")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--model", default=None, help="a model directory (default: a tiny random model built here)")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("FAIL no CUDA device visible to torch (check the driver and CUDA_VISIBLE_DEVICES)")
        return 1
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if args.device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"
    checks = TIER_A if args.tier == "A" else TIER_B if args.tier == "B" else TIER_A
    if args.tier == "all":
        have_b = all(importlib.util.find_spec(m) for m in ("vllm", "ray"))
        checks = TIER_A + (TIER_B if have_b else [])
        if not have_b:
            print("SKIP tier B: vLLM and Ray are not installed (tier A needs neither)")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        from tests.tiny_model import build_tiny_model

        model = Path(args.model) if args.model else build_tiny_model(Path(tmp) / "model")
        for name, check in checks:
            start = time.perf_counter()
            try:
                line = check(model, args.device)
                word = "SKIP" if line.startswith("SKIP") else "PASS"
                print(f"{word} {name} {line.removeprefix('SKIP ')} [{time.perf_counter() - start:.0f} s]", flush=True)
            except Exception as err:  # noqa: BLE001 - every check reports, the next one still runs
                failed += 1
                print(f"FAIL {name} {type(err).__name__}: {err}".splitlines()[0][:400], flush=True)
                traceback.print_exc(file=sys.stderr)
    return failed


if __name__ == "__main__":
    sys.exit(main())
