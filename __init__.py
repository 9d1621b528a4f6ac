"""gradus: curriculum-first distributed GRPO post-training.

The repository's top-level folders install as this package's subpackages:
gradus.curriculum (what to train on next), gradus.rollout (generate and score),
gradus.trainer (update the policy), gradus.launch (assemble and run).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gradus")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
