"""Async rollout (bounded staleness) vs the synchronous loop: trained samples
per second on the same config, seed and steps, run one after the other here.

    python benchmarks/async_vs_sync.py [--config configs/default.yaml] [--steps 6] [--staleness 1] [key=value ...]

Throughput = samples trained / summed step wall time (start-up excluded; the
first step is dropped as warm-up). Also prints each mode's generate/train
split and the lag it trained with.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from gradus.launch.config.load import load_config
from gradus.launch.run.loop import train


def measure(config: str, overrides: list[str], run_dir: Path) -> dict[str, float]:
    cfg = load_config(config, [*overrides, f"run.run_dir={run_dir}", "run.checkpoint_every=0", "wandb.mode=disabled"])
    train(cfg, overwrite=True)
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    samples = sum(cfg.rollout.prompts_per_step * cfg.rollout.group_size for m in steps if m.get("train/tokens", 0) > 0)
    wall = sum(m["time/step"] for m in steps)
    return {
        "samples_per_s": samples / wall,
        "step_s": wall / len(steps),
        "generate_s": sum(m["time/generate"] for m in steps) / len(steps),
        "train_s": sum(m.get("time/train", 0.0) for m in steps) / len(steps),
        "lag_mean": sum(m.get("async/lag_mean", 0.0) for m in steps) / len(steps),
        "reward": sum(m["reward/mean"] for m in steps) / len(steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--staleness", type=int, default=1)
    parser.add_argument(
        "--split-threads",
        action="store_true",
        help="async: 1 thread each for vLLM and the trainer (they run at once; 2 each oversubscribe 2 cores)",
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    base = [f"run.steps={args.steps}", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        sync = measure(args.config, base, Path(tmp) / "sync")
        threads = ["rollout.threads=1", "trainer.threads=1"] if args.split_threads else []
        async_ = measure(
            args.config,
            [*base, *threads, "rollout.async_generation=true", f"rollout.max_staleness={args.staleness}"],
            Path(tmp) / "async",
        )
    print(f"{'mode':<22}{'samples/s':>10}{'step s':>8}{'gen s':>8}{'train s':>9}{'lag':>6}{'reward':>8}")
    for name, m in (("sync", sync), (f"async (staleness {args.staleness})", async_)):
        print(
            f"{name:<22}{m['samples_per_s']:>10.3f}{m['step_s']:>8.1f}{m['generate_s']:>8.1f}{m['train_s']:>9.1f}{m['lag_mean']:>6.2f}{m['reward']:>8.3f}"
        )
    print(f"async / sync throughput: {async_['samples_per_s'] / sync['samples_per_s']:.2f}x")


if __name__ == "__main__":
    main()
