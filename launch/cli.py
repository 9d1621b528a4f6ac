"""`gradus` command line. Bad input ends in one clear line, not a stack trace."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from gradus.curriculum.registry import nearest
from gradus.launch.errors import GradusError
from gradus.launch.run.preempt import EXIT_PREEMPTED, Preempted


def _run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in the same run.run_dir")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="PATH",
        help="continue from the run dir's latest checkpoint, or from checkpoints/step-NNNNNN at PATH; "
        "`--resume auto`: continue if the run dir holds a checkpoint, else start (for re-queued cluster jobs)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradus", description="Curriculum GRPO post-training on Ray + vLLM + DeepSpeed."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run GRPO training from a YAML config with key.sub=value overrides")
    train.add_argument("config", help="YAML preset, e.g. configs/default.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides such as trainer.lr=1e-6 rollout.group_size=4")
    _run_flags(train)
    submit = sub.add_parser(
        "submit", help="run `gradus train` as a Ray job on a running cluster (wraps `ray job submit`)"
    )
    submit.add_argument("config", help="YAML preset inside the current directory (the directory is uploaded)")
    submit.add_argument("overrides", nargs="*", help="dotted overrides, as for train")
    submit.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
        help="the head's job server (default $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)",
    )
    submit.add_argument("--no-wait", action="store_true", help="return once submitted instead of following the logs")
    _run_flags(submit)
    submit.add_argument("--dry-run", action="store_true", help="print the ray job submit command instead of running it")
    ablate = sub.add_parser(
        "ablate", help="run a grid of curricula x seeds and compare them (results.csv, results.md, plots)"
    )
    ablate.add_argument("ablation", help="ablation YAML, e.g. configs/ablation.yaml")
    ablate.add_argument(
        "--parallel", type=int, default=None, help="cells at once as Ray tasks (default: the file's `parallel`)"
    )
    ablate.add_argument(
        "--summarize-only", action="store_true", help="only rebuild results and plots from the finished runs"
    )
    ablate.add_argument(
        "--publish",
        default=None,
        metavar="DIR",
        help=(
            "after the runs, copy each run's metrics and summarize into DIR (e.g. docs/results), "
            "recomputable from there"
        ),
    )
    ablate.add_argument(
        "--partial",
        action="store_true",
        help="with --publish: publish the finished runs of a grid still running (results.md names the rest)",
    )
    plot = sub.add_parser("plot", help="draw a run's plots into RUN_DIR/plots")
    plot.add_argument("run_dir")
    evaluate = sub.add_parser("eval", help="held-out accuracy per distribution with vLLM, for a run dir or a model dir")
    evaluate.add_argument(
        "target", help="a run directory (uses its config and final policy) or a model directory / embedded model name"
    )
    evaluate.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.eval_size=100")
    evaluate.add_argument("--config", default=None, help="config for a model directory (default configs/default.yaml)")
    evaluate.add_argument("--samples", type=int, default=None, help="samples per prompt (default eval.samples)")
    evaluate.add_argument("--temperature", type=float, default=None, help="default eval.temperature (0 = greedy)")
    evaluate.add_argument("--out", default=None, help="write the result JSON here (a run dir gets RUN_DIR/eval.json)")
    bench = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (see benchmarks/README.md)")
    bench.add_argument("name", help="e.g. weight_sync, async_vs_sync, vs_trl, rollout_vs_generate")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script")
    data = sub.add_parser("data", help="write a ready-made dataset (verl parquet format)").add_subparsers(
        dest="dataset", required=True
    )
    kk = data.add_parser(
        "kk", help="Knights-and-Knaves puzzles, one data_source per number of people (configs/kk_mixture.yaml)"
    )
    kk.add_argument(
        "--people", type=int, nargs="+", default=[3, 4, 5, 6, 7], help="numbers of people, one data_source each (3-8)"
    )
    kk.add_argument("--rows", type=int, default=1000, help="puzzles per number of people")
    kk.add_argument("--seed", type=int, default=0)
    kk.add_argument("--out", default="data/kk.parquet", help="parquet file to write")
    sub.add_parser(
        "list",
        help="every pick-by-name setting (curricula, samplers, losses, ...) with its entries and their parameters",
    )
    prepare = sub.add_parser(
        "prepare-model", help="convert the embedded default model to a local safetensors directory"
    )
    prepare.add_argument("name", nargs="?", default="smollm2-135m-instruct")
    prepare.add_argument("--out", default=None, help="target directory (default: $GRADUS_HOME/models/NAME)")
    prepare.add_argument("--force", action="store_true", help="convert again even if the directory exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            from gradus.launch.config.registries import listing

            print(listing())
        elif args.command == "prepare-model":
            from gradus.launch.prepare.model_dirs import prepare_model

            print(prepare_model(args.name, args.out, args.force))
        elif args.command == "data":
            from gradus.launch.prepare.datasets import write_kk

            path, counts = write_kk(args.out, args.people, args.rows, args.seed)
            print(
                f"gradus: wrote {sum(counts.values())} rows to {path}: "
                + ", ".join(f"{k} {v}" for k, v in counts.items())
            )
        elif args.command == "submit":
            from gradus.launch.cluster.submit import job_command

            command = job_command(
                args.config, args.overrides, args.address, not args.no_wait, args.resume, args.overwrite
            )
            if args.dry_run:
                print(shlex.join(command))
            else:
                return subprocess.run(command, check=False).returncode
        elif args.command == "ablate":
            from gradus.launch.experiments.ablate import ablate, load_ablation, publish, summarize

            paths = (
                summarize(*load_ablation(args.ablation))
                if args.summarize_only
                else ablate(args.ablation, args.parallel)
            )
            if args.publish:
                paths = publish(*load_ablation(args.ablation), Path(args.publish), args.partial)
            print(paths["markdown"].read_text())
            print(f"gradus: results in {paths['csv']} and {paths['markdown']}, plots in {paths['plots']}")
        elif args.command == "plot":
            from gradus.launch.experiments.plots import plot_all
            from gradus.launch.experiments.results import read_metrics

            run_dir = Path(args.run_dir)
            if not (run_dir / "metrics.jsonl").is_file():
                raise GradusError(
                    f"{run_dir} has no metrics.jsonl; pass a run directory (run.run_dir of a gradus train run)"
                )
            plot_all({run_dir.name: [read_metrics(run_dir, with_start=True)]}, run_dir / "plots")
            print(f"gradus: plots in {run_dir / 'plots'}")
        elif args.command == "eval":
            from gradus.launch.experiments.evaluate import run_eval

            result = run_eval(args.target, args.config, args.overrides, args.samples, args.temperature, args.out)
            for name, accuracy in result["accuracy"].items():
                print(
                    f"{name:<16}{accuracy:.3f}" + (f"  ({result['rows'][name]} rows)" if name in result["rows"] else "")
                )
        elif args.command == "bench":
            benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
            if not benchmarks.is_dir():
                raise GradusError(
                    "gradus bench runs the scripts of a checkout's benchmarks/ folder, "
                    f"and {benchmarks} does not exist: "
                    "install gradus from a git checkout (pip install -e .) to run benchmarks"
                )
            script = benchmarks / f"{args.name}.py"
            if not script.is_file():
                names = sorted(p.stem for p in script.parent.glob("*.py"))
                raise GradusError(f"no benchmark {args.name!r}{nearest(args.name, names)}; choose one of {names}")
            return subprocess.run([sys.executable, str(script), *args.args], check=False).returncode
        elif args.command == "train":
            from gradus.launch.config.load import load_config
            from gradus.launch.run.loop import train

            cfg = load_config(args.config, args.overrides)
            print(
                "gradus: run finished, metrics in "
                f"{train(cfg, overwrite=args.overwrite, resume=args.resume) / 'metrics.jsonl'}"
            )
    except GradusError as err:
        print(f"gradus: error: {err}", file=sys.stderr)
        return 2
    except Preempted as err:
        print(f"gradus: {err}", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
