"""Resolve a suite's model sources to local directories before any work, with a message that says how to fix it.

Order for a model named ``NAME`` in a suite: ``--model-path NAME=DIR`` on the command line, then the source's
``env`` variable (e.g. ``PAT_MODEL_LLAMA2_7B=/models/Llama-2-7b-hf``), then its ``path``, its ``registered`` name
(``pat.models.REGISTRY``), a ``random`` tiny model (built once into the cache), and last its ``hub`` id when the
hub is online. Missing models are reported together, before any run starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from bench.harness.suites import ModelSource

log = logging.getLogger(__name__)


class MissingModelsError(RuntimeError):
    """One or more models of a suite cannot be found; the message lists each with the ways to point at it."""


def _local_dir(p: str | os.PathLike) -> Path | None:
    path = Path(os.path.expandvars(str(p))).expanduser()
    return path if (path / "config.json").exists() else None


def resolve_source(src: ModelSource, overrides: dict[str, str] | None = None) -> str | None:
    """A local directory (or an online hub id) for ``src``, or ``None`` when it cannot be found."""
    overrides = overrides or {}
    if src.name in overrides:
        d = _local_dir(overrides[src.name])
        if d is None:
            raise MissingModelsError(f"--model-path {src.name}={overrides[src.name]}: no config.json there; expected "
                                     f"a Hugging Face model directory")
        return str(d)
    if src.env and os.environ.get(src.env):
        d = _local_dir(os.environ[src.env])
        if d is None:
            raise MissingModelsError(f"${src.env}={os.environ[src.env]}: no config.json there; expected a Hugging "
                                     f"Face model directory")
        return str(d)
    if src.path and _local_dir(src.path):
        return str(_local_dir(src.path))
    if src.registered:
        from pat.models import resolve  # lazy, as torch below: checking a suite's sources stays torch-free

        return resolve(src.registered)
    if src.random is not None:
        return str(build_random_model(src.random))
    from pat.offline import hub_offline  # lazy, as every pat import here: importing pat imports torch

    if src.hub and not hub_offline():
        return src.hub
    return None


def resolve_models(sources: dict[str, ModelSource], names: list[str], overrides: dict[str, str] | None = None,
                   suite: str = "", runs_here: str = "cpu") -> dict[str, str]:
    """Resolve every model in ``names``; raise ``MissingModelsError`` listing all the missing ones and the fixes."""
    found, missing = {}, []
    for n in names:
        where = resolve_source(sources[n], overrides)
        if where is None:
            missing.append(sources[n])
        else:
            found[n] = where
    if missing:
        lines = [f"suite '{suite}': {len(missing)} model(s) not found, nothing was run:"]
        for s in missing:
            ways = [f"--model-path {s.name}=DIR"]
            if s.env:
                ways.append(f"export {s.env}=DIR")
            if s.hub:
                ways.append(f"go online (unset HF_HUB_OFFLINE) to download {s.hub}")
            lines.append(f"  - {s.name}{f' ({s.size})' if s.size else ''}: " + " | ".join(ways))
        lines.append(f"DIR is a Hugging Face model directory (config.json + weights). On this machine run: "
                     f"python -m bench.run --suite {runs_here}")
        raise MissingModelsError("\n".join(lines))
    return found


def _byte_tokenizer(model_max_length: int):
    """A byte-level BPE tokenizer with no merges (256 byte tokens + <s>, </s>, <pad>): no download, deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for tok in ("<s>", "</s>", "<pad>"):
        vocab[tok] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=model_max_length)


def build_random_model(cfg: dict[str, Any], root: Path | None = None) -> Path:
    """Build (once) a tiny random model from ``cfg`` (``model_type`` + config fields + ``seed``) into the cache.

    The directory name hashes ``cfg``, so a changed config builds a new model; the write is atomic (temp dir + rename).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pat.io import atomic_dir
    from pat.models import cache_dir

    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    out = (root or cache_dir() / "models") / f"random-{cfg.get('model_type', 'llama')}-{key}"
    if (out / "config.json").exists():
        return out
    fields = {k: v for k, v in cfg.items() if k not in ("model_type", "seed")}
    tok = _byte_tokenizer(fields.get("max_position_embeddings", 512))
    fields.setdefault("max_position_embeddings", 512)
    config = AutoConfig.for_model(cfg.get("model_type", "llama"), vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **fields)
    torch.manual_seed(int(cfg.get("seed", 0)))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with atomic_dir(out, replace=False) as tmp:  # another shard may have built it meanwhile
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    log.info("built random model %s", out)
    return out
