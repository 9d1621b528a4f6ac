"""`gradus` command line. Bad input ends in one clear line, not a stack trace."""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

from launch.errors import GradusError


def _run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in the same run.run_dir")
    parser.add_argument(
        "--resume", nargs="?", const="latest", default=None, metavar="PATH",
        help="continue from the run dir's latest checkpoint, or from checkpoints/step-NNNNNN at PATH",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradus", description="Curriculum GRPO post-training on Ray + vLLM + DeepSpeed.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run GRPO training from a YAML config with key.sub=value overrides")
    train.add_argument("config", help="YAML preset, e.g. configs/default.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides such as trainer.lr=1e-6 rollout.group_size=4")
    _run_flags(train)
    submit = sub.add_parser("submit", help="run `gradus train` as a Ray job on a running cluster (wraps `ray job submit`)")
    submit.add_argument("config", help="YAML preset inside the current directory (the directory is uploaded)")
    submit.add_argument("overrides", nargs="*", help="dotted overrides, as for train")
    submit.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
                        help="the head's job server (default $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265)")
    submit.add_argument("--no-wait", action="store_true", help="return once submitted instead of following the logs")
    _run_flags(submit)
    submit.add_argument("--dry-run", action="store_true", help="print the ray job submit command instead of running it")
    prepare = sub.add_parser("prepare-model", help="convert the embedded default model to a local safetensors directory")
    prepare.add_argument("name", nargs="?", default="smollm2-135m-instruct")
    prepare.add_argument("--out", default=None, help="target directory (default: $GRADUS_HOME/models/NAME)")
    prepare.add_argument("--force", action="store_true", help="convert again even if the directory exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "prepare-model":
            from launch.models import prepare_model

            print(prepare_model(args.name, args.out, args.force))
        elif args.command == "submit":
            from launch.submit import job_command

            command = job_command(args.config, args.overrides, args.address, not args.no_wait, args.resume, args.overwrite)
            if args.dry_run:
                print(shlex.join(command))
            else:
                return subprocess.run(command, check=False).returncode
        elif args.command == "train":
            from launch.config import load_config
            from launch.driver import train

            cfg = load_config(args.config, args.overrides)
            print(f"gradus: run finished, metrics in {train(cfg, overwrite=args.overwrite, resume=args.resume) / 'metrics.jsonl'}")
    except GradusError as err:
        print(f"gradus: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
