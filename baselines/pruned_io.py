"""Save and load structurally pruned models.

Baselines leave per-layer widths (heads, KV heads, MLP channels), extra biases (FLAP) or extra modules (SliceGPT's
shortcut rotations) that stock ``from_pretrained`` cannot rebuild; ``ignore_mismatched_sizes`` would silently
re-initialise them, so it is never used. The format here is a directory with

- ``config.json``: the model config (``head_dim`` explicit; true ``hidden_size`` even when transformers' validator
  would refuse it, see below),
- ``model.safetensors``: all weights (tied weights stored once),
- ``pruned_manifest.json``: per decoder layer, every ``nn.Linear`` as ``[in, out, has_bias]``, the attention head
  counts, and the layer wrapper (``null`` or ``"shortcut"`` with its matrix shapes),
- the tokenizer files.

The loader rebuilds the model from the config, reshapes each layer per the manifest, then loads the weights with
``strict=True``. Models whose shapes a stock build of their config reproduces are saved as plain Hugging Face
directories (``save_pretrained``), loadable with ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

from safetensors.torch import load_model as load_safetensors
from safetensors.torch import save_model as save_safetensors
from transformers import AutoConfig, AutoModelForCausalLM

from baselines.common import attn_module_path, set_attn_counts
from baselines.slicegpt import ShortcutDecoderLayer
from pat.arch import base_model, decoder_layers, get_arch, get_module, head_dim, set_module
from pat.io import atomic_dir
from pat.models import PRUNED_MANIFEST, load, load_tokenizer, prepare_loaded, resolve

log = logging.getLogger(__name__)

MANIFEST = PRUNED_MANIFEST
FORMAT = "pat-bench-pruned"
VERSION = 1


class PrunedCheckpointError(ValueError):
    """A pruned checkpoint that does not match its manifest; the message names the field."""


def is_pruned_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory holding a pruned manifest (not a plain Hugging Face directory)."""
    return (Path(path) / MANIFEST).is_file()


def _layer_manifest(layer: nn.Module, arch, config) -> dict:
    linears = {n: [m.in_features, m.out_features, m.bias is not None]
               for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
    hd = head_dim(config)
    entry = {
        "linears": linears,
        "num_heads": get_module(layer, arch.attn_in[0]).out_features // hd,
        "num_key_value_heads": get_module(layer, arch.attn_in[1]).out_features // hd,
        "wrapper": None,
    }
    shortcut = getattr(layer, "shortcut_manifest", None)
    if callable(shortcut):
        entry["wrapper"] = shortcut()
    return entry


def build_manifest(model: nn.Module) -> dict:
    model = base_model(model)
    arch, cfg = get_arch(model), model.config
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_type": cfg.model_type,
        "hidden_size": int(cfg.hidden_size),
        "head_dim": head_dim(cfg),
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "head_hidden": int(get_module(model, arch.lm_head).in_features),
        "layers": [_layer_manifest(layer, arch, cfg) for layer in decoder_layers(model, arch)],
    }


def is_stock_loadable(model: nn.Module) -> bool:
    """True when a stock build of the model's config has exactly the model's parameter names and shapes."""
    from transformers import AutoModelForCausalLM

    model = base_model(model)
    if any(callable(getattr(layer, "shortcut_manifest", None)) for layer in decoder_layers(model)):
        return False
    try:
        model.config.validate()
    except Exception:  # noqa: BLE001 - transformers refuses e.g. hidden % heads != 0; the manifest format carries it
        return False
    with torch.device("meta"):
        ref = AutoModelForCausalLM.from_config(model.config)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return want == have


def needs_pruned_format(model: nn.Module) -> bool:
    """True when ``model`` cannot be saved as a plain Hugging Face directory (``save_pruned`` writes a manifest)."""
    return not is_stock_loadable(model)


def save_pruned(model: nn.Module, tokenizer, out_dir: str | os.PathLike | None = None) -> Path:
    """Save ``model`` (and ``tokenizer``) to ``out_dir`` atomically: plain HF when stock-loadable, else the manifest
    format.

    ``save_pruned(model, out_dir)`` (no tokenizer) is accepted too.

    Returns:
        The output directory.
    """
    if out_dir is None:
        tokenizer, out_dir = None, tokenizer
    model = base_model(model)
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        if is_stock_loadable(model):
            model.save_pretrained(tmp)
        else:
            (tmp / "config.json").write_text(model.config.to_json_string(use_diff=False))
            save_safetensors(model, str(tmp / "model.safetensors"))
            (tmp / MANIFEST).write_text(json.dumps(build_manifest(model), indent=1))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    log.info("saved %s model to %s", "pruned-manifest" if is_pruned_checkpoint(out) else "plain HF", out)
    return out


def _load_config(path: Path, manifest: dict):
    """The config; transformers refuses ``hidden_size % num_attention_heads != 0`` even with an explicit ``head_dim``
    (SliceGPT widths), so it is built with a valid placeholder and the true value set afterwards."""
    raw = json.loads((path / "config.json").read_text())
    hidden = int(manifest["hidden_size"])
    raw["hidden_size"] = int(raw["num_attention_heads"]) * int(manifest["head_dim"])
    model_type = raw.pop("model_type")
    for k in ("transformers_version", "architectures"):
        raw.pop(k, None)
    cfg = AutoConfig.for_model(model_type, **raw)
    cfg.hidden_size = hidden
    cfg.head_dim = int(manifest["head_dim"])
    return cfg


def _reshape_layer(layer: nn.Module, entry: dict, arch, config, dtype: torch.dtype, index: int) -> nn.Module:
    wrapper = entry.get("wrapper")
    if wrapper is not None:
        if wrapper.get("kind") != "shortcut":
            raise PrunedCheckpointError(f"layers[{index}].wrapper.kind: unknown '{wrapper.get('kind')}'; "
                                        "expected 'shortcut'")
        layer = ShortcutDecoderLayer.from_manifest(layer, arch, wrapper, dtype)
    for name, spec in entry["linears"].items():
        if not (isinstance(spec, list) and len(spec) == 3):
            raise PrunedCheckpointError(f"layers[{index}].linears.{name}: expected [in, out, has_bias], got {spec!r}")
        n_in, n_out, bias = spec
        set_module(layer, name, nn.Linear(int(n_in), int(n_out), bias=bool(bias), dtype=dtype))
    attn = get_module(layer, attn_module_path(arch))
    set_attn_counts(attn, int(entry["num_heads"]), int(entry["num_key_value_heads"]))
    return layer


def load_pruned(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Rebuild a model saved by ``save_pruned`` in the manifest format and load its weights strictly.

    Raises:
        PrunedCheckpointError: when the manifest is not ours, or its layers/weights disagree with the files.
    """
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise PrunedCheckpointError(f"{path / MANIFEST}: format/version "
                                    f"{manifest.get('format')}/{manifest.get('version')}; "
                                    f"expected {FORMAT}/{VERSION}")
    cfg = _load_config(path, manifest)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    arch = get_arch(model)
    layers = decoder_layers(model, arch)
    if len(manifest["layers"]) != len(layers):
        raise PrunedCheckpointError(f"{MANIFEST}: layers has {len(manifest['layers'])} entries; "
                                    f"config has {len(layers)} layers")
    for i, entry in enumerate(manifest["layers"]):
        layers[i] = _reshape_layer(layers[i], entry, arch, cfg, dtype, i)
    head_hidden = int(manifest.get("head_hidden", manifest["hidden_size"]))
    if head_hidden != int(manifest["hidden_size"]):  # SliceGPT's unsliced head path: final norm and head stay wide
        norm, head = get_module(model, arch.final_norm), get_module(model, arch.lm_head)
        # loaded on the CPU on purpose (then moved by the caller); the checkpoint fills it
        norm.weight = nn.Parameter(torch.zeros(head_hidden, dtype=dtype, device="cpu"))
        set_module(model, arch.lm_head, nn.Linear(head_hidden, head.out_features, bias=head.bias is not None,
                                                  dtype=dtype))
    if manifest.get("tie_word_embeddings"):
        model.tie_weights()
    try:
        load_safetensors(model, str(path / "model.safetensors"), strict=True)
    except RuntimeError as e:
        raise PrunedCheckpointError(f"{path}: model.safetensors does not match {MANIFEST}: {e}") from e
    return model.eval()


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | None = None):
    """``(model, tokenizer)`` for a registered name, a local HF directory, a hub id or a pruned checkpoint.

    Stock checkpoints load through ``pat.models.load``; the pruned (manifest) format through ``load_pruned``.
    """
    src = resolve(name_or_path)
    if not is_pruned_checkpoint(src):
        return load(src, dtype=dtype, device=device)
    model = load_pruned(src, dtype=dtype)
    return prepare_loaded(model, load_tokenizer(src, model.config), device)
