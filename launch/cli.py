"""`gradus` command line. Bad input ends in one clear line, not a stack trace."""
from __future__ import annotations

import argparse
import sys

from launch.errors import GradusError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradus", description="Curriculum GRPO post-training on Ray + vLLM + DeepSpeed.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run GRPO training from a YAML config with key.sub=value overrides")
    train.add_argument("config", help="YAML preset, e.g. configs/default.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides such as trainer.lr=1e-6 rollout.group_size=4")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier run in the same run.run_dir")
    train.add_argument(
        "--resume", nargs="?", const="latest", default=None, metavar="PATH",
        help="continue from the run dir's latest checkpoint, or from checkpoints/step-NNNNNN at PATH",
    )
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
