"""The offline settings of the Hugging Face libraries, read at call time (tests and CLIs may set them late)."""

from __future__ import annotations

import os

_FALSE = ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """``True`` when the environment variable ``name`` is set to anything but empty/0/false/no/off."""
    return os.environ.get(name, "0").strip().lower() not in _FALSE


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: no model or file downloads from the hub."""
    return env_flag("HF_HUB_OFFLINE")


def datasets_offline() -> bool:
    """``HF_DATASETS_OFFLINE`` is set: no dataset downloads from the hub."""
    return env_flag("HF_DATASETS_OFFLINE")


def online() -> bool:
    """Neither the hub nor the datasets library is offline."""
    return not (hub_offline() or datasets_offline())
