"""The offline settings of the Hugging Face libraries, read at call time (tests and CLIs may set them late)."""

from __future__ import annotations

import os

_TRUE = ("1", "ON", "YES", "TRUE")  # the values huggingface_hub itself reads as true


def env_flag(name: str) -> bool:
    """``True`` when the environment variable ``name`` is 1/on/yes/true (any case), as huggingface_hub reads it."""
    return os.environ.get(name, "").strip().upper() in _TRUE


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: no model or file downloads from the hub."""
    return env_flag("HF_HUB_OFFLINE")


def datasets_offline() -> bool:
    """``HF_DATASETS_OFFLINE`` is set: no dataset downloads from the hub."""
    return env_flag("HF_DATASETS_OFFLINE")


def online() -> bool:
    """Neither the hub nor the datasets library is offline."""
    return not (hub_offline() or datasets_offline())
