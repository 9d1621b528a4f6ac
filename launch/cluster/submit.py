"""`gradus submit`: `gradus train` as a Ray job on a running cluster (a thin
wrapper over `ray job submit`). The config is checked here first, so a typo
fails in a second on the laptop, not minutes later on the cluster."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from gradus.launch.config.load import load_config
from gradus.launch.errors import GradusError

# Never uploaded with the working directory: run outputs, VCS, caches.
EXCLUDES = ["runs/", ".git/", "wandb/", "**/__pycache__/", "*.gguf", "*.safetensors"]


def job_command(
    config: str,
    overrides: list[str],
    address: str,
    wait: bool = True,
    resume: str | None = None,
    overwrite: bool = False,
) -> list[str]:
    """The `ray job submit` command line for one training run."""
    load_config(config, overrides)
    path = Path(config).resolve()
    if not path.is_relative_to(Path.cwd()):
        raise GradusError(
            f"config file {config} is outside the working directory {Path.cwd()}, which is what the job uploads; "
            "run gradus submit from the directory that holds it"
        )
    train = ["python", "-m", "gradus.launch.cli", "train", str(path.relative_to(Path.cwd())), *overrides]
    if resume is not None:
        train += ["--resume"] + ([] if resume == "latest" else [resume])
    if overwrite:
        train.append("--overwrite")
    # ray joins the entrypoint's words with spaces into a shell command: quote each one.
    return [
        "ray",
        "job",
        "submit",
        f"--address={address}",
        "--working-dir=.",
        f"--runtime-env-json={json.dumps({'excludes': EXCLUDES})}",
        *([] if wait else ["--no-wait"]),
        "--",
        *(shlex.quote(word) for word in train),
    ]
