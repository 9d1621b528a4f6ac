"""Chaos run: a seeded schedule of faults across a tiny-model run, repeated
over several seeds, each compared with the same run left alone.

    python benchmarks/chaos.py [--seeds 3] [--steps 14] [--checkpoint-every 3] [--kinds ...] [--async] [--out F]

Fault kinds (each seed draws a step for each of the six from the whole run; a
fault fires once the run has logged that many steps and at least one step since
the previous fault, after a seeded delay of 0-2 s; steps take ~2 s here):
  rollout   SIGKILL a vLLM rollout worker (mid-generate: generation is most of a step)
  hang      SIGSTOP a vLLM rollout worker: the watchdog (run.call_timeout_s) must notice and replace it
  trainer   SIGKILL a DeepSpeed trainer rank (the run restarts from its checkpoint)
  scheduler SIGKILL the curriculum scheduler actor (restarted from the per-step snapshot)
  sigkill   SIGKILL the driver's whole process tree, then `gradus train --resume auto`
  sigterm   SIGTERM the driver (it checkpoints the step in flight, exits 75), then `--resume auto`
Reported per seed: faults injected, whether the run completed, steps lost
(steps finished but not in the checkpoint a restart or resume continued from),
and whether every step's curriculum probabilities (exactly) and reward, loss,
accuracy and grad norm (1e-6) equal the uninterrupted run's. Victims are found
among the driver's own descendants only (never another run's actors); a driver
SIGKILL takes its whole process group. Exits 1 if any run did not complete or
any step differs or misses a compared metric. Not a test (minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["rollout", "hang", "trainer", "scheduler", "sigkill", "sigterm"]
ACTORS = {
    "rollout": "ray::RolloutActor",
    "hang": "ray::RolloutActor",
    "trainer": "ray::TrainerWorker",
    "scheduler": "ray::CurriculumScheduler",
}
CALL_TIMEOUT_S = 90  # the watchdog's deadline here: a hung worker is noticed within it (a fresh vLLM starts in ~30 s)
COMPARED = ("reward/mean", "accuracy", "train/loss", "train/grad_norm", "length/tokens_mean")


def command(model: Path, run_dir: Path, args: argparse.Namespace) -> list[str]:
    extra = ["rollout.async_generation=true", "rollout.max_staleness=1"] if args.async_ else []
    return [
        sys.executable,
        "-m",
        "gradus.launch.cli",
        "train",
        "configs/dump.yaml",
        f"model.path={model}",
        f"run.run_dir={run_dir}",
        f"run.steps={args.steps}",
        f"run.checkpoint_every={args.checkpoint_every}",
        "run.max_restarts=3",
        f"run.call_timeout_s={CALL_TIMEOUT_S}",
        "run.save_final=false",
        "wandb.mode=disabled",
        "rollout.max_tokens=64",
        "reward.length=1.0",
        "curriculum.budget={kind: constant, budget: 64}",
        "trainer.lr=1e-3",
        "eval.every=0",
        *extra,
        "--resume",
        "auto",
    ]


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def pids(driver: int, title: str) -> list[int]:
    """This run's processes whose title starts with `title`: descendants of its
    driver (the local Ray it started, and so every actor), never another run's."""
    import psutil

    try:
        family = psutil.Process(driver).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for p in family:
        try:
            if " ".join(p.cmdline()).startswith(title) and p.status() != psutil.STATUS_STOPPED:
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def latest_checkpoint(run_dir: Path) -> int:
    """The newest complete checkpoint's step, -1 if none."""
    found = [
        int(p.name.removeprefix("step-"))
        for p in (run_dir / "checkpoints").glob("step-*")
        if (p / "state.json").is_file()
    ]
    return max(found, default=-1)


def schedule(seed: int, steps: int, kinds: list[str]) -> list[tuple[int, str, float]]:
    """(steps logged before the fault fires, kind, delay s): every kind once, at steps drawn from the whole run
    (a fault waits for a step logged after the previous one, so give the run a step or two per fault)."""
    rng = random.Random(seed)
    at = sorted(rng.choices(range(1, max(2, steps - len(kinds))), k=len(kinds)))
    kinds = rng.sample(kinds, len(kinds))
    return [(a, k, round(rng.uniform(0, 2), 2)) for a, k in zip(at, kinds)]


def chaos_run(model: Path, run_dir: Path, args: argparse.Namespace, seed: int, log) -> dict:
    """One run under its seed's faults; relaunches the driver with --resume auto after driver faults."""
    faults = schedule(seed, args.steps, args.kinds)
    injected: list[dict] = []
    launches = 0
    output = ""
    last_fault = 0.0  # wall time of the previous fault: the next waits for a step logged after it
    while True:
        launches += 1
        out_path = run_dir.parent / f"driver-{launches}.log"
        with out_path.open("w") as out:
            proc = subprocess.Popen(
                command(model, run_dir, args), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            while proc.poll() is None and faults:
                done, kind, delay = faults[0]
                logged = run_dir / "metrics.jsonl"
                progressed = logged.exists() and logged.stat().st_mtime > last_fault
                if (
                    len(metrics(run_dir)) < done
                    or not progressed
                    or (kind in ACTORS and not pids(proc.pid, ACTORS[kind]))
                ):
                    time.sleep(0.2)
                    continue
                time.sleep(delay)
                if proc.poll() is not None:
                    break
                faults.pop(0)
                fault = {"kind": kind, "after_step": len(metrics(run_dir)), "delay_s": delay}
                injected.append(fault)
                log(f"seed {seed}: {kind} after {fault['after_step']} logged steps")
                if kind in ACTORS:
                    for pid in pids(proc.pid, ACTORS[kind])[:1]:
                        os.kill(pid, signal.SIGSTOP if kind == "hang" else signal.SIGKILL)
                elif kind == "sigterm":
                    proc.send_signal(signal.SIGTERM)
                    fault["exit_code"] = proc.wait()
                else:
                    family = pids(proc.pid, "")  # its local Ray and actors, found before the driver goes
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    for pid in family:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                # What a restart or resume continues from (a trainer rank's death restarts the run in-process).
                fault["checkpoint"] = latest_checkpoint(run_dir)
                fault["steps_lost"] = (
                    max(0, len(metrics(run_dir)) - (fault["checkpoint"] + 1))
                    if kind in ("trainer", "sigkill", "sigterm")
                    else 0
                )
                last_fault = time.time()
            proc.wait()
        output += out_path.read_text()
        if proc.returncode == 0 or launches > len(args.kinds) + 1:
            break
    return {
        "seed": seed,
        "faults": injected,
        "launches": launches,
        "returncode": proc.returncode,
        "scheduler_restarts": output.count("curriculum scheduler actor died"),
        "output_tail": output[-1500:],
    }


def compare(reference: list[dict], run: list[dict]) -> dict:
    """Step by step against the uninterrupted run; a compared metric missing from
    either run's step is a mismatch (never skipped)."""
    same_probs = len(run) == len(reference) and all(
        [a[k] for k in sorted(a) if k.endswith("/prob")] == [b.get(k) for k in sorted(a) if k.endswith("/prob")]
        for a, b in zip(reference, run)
    )
    missing = sorted(
        {f"step {a['step']}: {k}" for a, b in zip(reference, run) for k in COMPARED if k not in a or k not in b}
    )
    worst = max((abs(a[k] - b[k]) for a, b in zip(reference, run) for k in COMPARED if k in a and k in b), default=0.0)
    return {
        "probabilities_equal": same_probs,
        "metrics_max_abs_diff": worst,
        "missing_metrics": missing,
        "metrics_equal": len(run) == len(reference) and not missing and worst <= 1e-6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--checkpoint-every", type=int, default=3)
    parser.add_argument("--async", dest="async_", action="store_true", help="async rollout (max_staleness 1)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=KINDS, help="fault kinds to inject (default all)")
    parser.add_argument("--model", default=None, help="model directory (default: a tiny random model built here)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {msg}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.model:
            model = Path(args.model)
        else:
            sys.path.insert(0, str(ROOT))
            from tests.tiny_model import build_tiny_model

            model = build_tiny_model(tmp_path / "model")
        plain = subprocess.run(
            command(model, tmp_path / "reference" / "run", args), cwd=ROOT, capture_output=True, text=True
        )
        if plain.returncode != 0:
            sys.exit(f"the uninterrupted run failed:\n{plain.stdout[-3000:]}{plain.stderr[-3000:]}")
        reference = metrics(tmp_path / "reference" / "run")
        log(f"uninterrupted run: {len(reference)} steps")
        results = []
        for seed in range(args.seeds):
            seed_dir = tmp_path / f"seed-{seed}"
            seed_dir.mkdir()
            result = chaos_run(model, seed_dir / "run", args, seed, log)
            result.update(
                compare(reference, metrics(seed_dir / "run")),
                completed=result["returncode"] == 0,
                steps_lost=sum(f.get("steps_lost", 0) for f in result["faults"]),
            )
            results.append(result)
            log(
                f"seed {seed}: completed={result['completed']} steps_lost={result['steps_lost']} "
                f"probabilities_equal={result['probabilities_equal']} metrics_equal={result['metrics_equal']}"
            )
    mode = "async (staleness 1)" if args.async_ else "sync"
    print(
        f"\n{mode}, {args.steps} steps, checkpoint every {args.checkpoint_every}, "
        f"{time.time() - started:.0f} s in all\n"
    )
    print(
        "| seed | faults (after N logged steps) | launches | completed | steps lost | curriculum probs equal "
        "| metrics equal (max abs diff) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        faults = ", ".join(
            f"{f['kind']}@{f['after_step']}"
            + (" (after the last step: no effect)" if f["after_step"] >= args.steps else "")
            for f in r["faults"]
        )
        print(
            f"| {r['seed']} | {faults} | {r['launches']} | {r['completed']} | {r['steps_lost']} | "
            f"{r['probabilities_equal']} | "
            f"{r['metrics_equal']} ({r['metrics_max_abs_diff']:.1e}) |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    failed = [r["seed"] for r in results if not (r["completed"] and r["probabilities_equal"] and r["metrics_equal"])]
    if failed:
        sys.exit(
            f"chaos: seeds {failed} did not complete or differ from the uninterrupted run (missing metrics: "
            f"{[m for r in results for m in r['missing_metrics']][:5]})"
        )


if __name__ == "__main__":
    main()
