"""`gradus submit`: `gradus train` as a Ray job on a running cluster (a thin
wrapper over `ray job submit`). The config is checked here first, so a typo
fails in a second on the laptop, not minutes later on the cluster."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from gradus.launch.config.load import load_config
from gradus.launch.errors import GradusError

# Never uploaded with the working directory: run outputs, VCS, caches, and
# secrets (environment files, keys, credentials), whatever .gitignore says.
EXCLUDES = ["runs/", ".git/", "wandb/", "**/__pycache__/", "*.gguf", "*.safetensors"]
SECRETS = [
    ".env",
    ".env.*",
    "*.env",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_ed25519*",
    ".netrc",
    ".git-credentials",
    "credentials*",
    ".aws/",
    ".ssh/",
    ".gnupg/",
    "*.p12",
    "*.pfx",
    ".ray/",
]


def excludes(directory: Path) -> list[str]:
    """What the job must not upload: EXCLUDES, SECRETS and the patterns of the
    directory's .gitignore (gitignore syntax, as Ray's excludes take it)."""
    ignore = directory / ".gitignore"
    patterns = []
    if ignore.is_file():
        patterns = [line.strip() for line in ignore.read_text().splitlines()]
        patterns = [p for p in patterns if p and not p.startswith(("#", "!"))]
    return list(dict.fromkeys([*EXCLUDES, *SECRETS, *patterns]))


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
        f"--runtime-env-json={json.dumps({'excludes': excludes(Path.cwd())})}",
        *([] if wait else ["--no-wait"]),
        "--",
        *(shlex.quote(word) for word in train),
    ]
