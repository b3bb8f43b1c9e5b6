"""``ForeignDefaultDevice``: run a CPU model as if it lived on an accelerator, to catch device bugs on a CPU-only box.

On a GPU run, a tensor that our code (``pat``, ``baselines``, ``bench``) creates without a device lands on the CPU
while the model lives on CUDA; the first op that mixes them crashes. On a CPU test the two coincide and nothing
shows. This mode separates them again: while it is active,

* every factory call (``torch.zeros/ones/eye/arange/tensor/full/empty/rand*/as_tensor/...``) made *directly from our
  code* without a ``device`` (and outside any ``with torch.device(...)``) gets ``device="meta"``: the "foreign"
  device that plays the CPU of a GPU run, while the model plays CUDA. Calls from torch, transformers, peft or
  accelerate are left alone (they place their own tensors; e.g. AdamW keeps its step counter on the CPU on purpose).
* every op is checked: its non-scalar tensor arguments must share one device, else ``DeviceMismatch`` names the op
  and the devices. 0-dim tensors are exempt, as CUDA accepts a CPU scalar beside a CUDA tensor. Moves
  (``to``, ``copy_``, ...) are exempt too. torch itself raises for most mixes, but not for all (indexing a CPU tensor
  with a meta index silently returns a meta tensor): the check makes every mix fail, and say where.

A meta tensor has no data, so a foreign tensor that reaches a data-dependent read (``.item()``, ``bool(t)``) or is
copied to the model's device fails too, as it must: on a GPU it would have been a CPU tensor where a CUDA one was
needed (or, for the copy, an avoidable host round trip of data that was never filled in). Code that keeps index math
or token lists on the CPU *on purpose* says so with an explicit ``device="cpu"``, which this mode respects.

What it does not catch: a tensor placed on the CPU explicitly (``device="cpu"``, ``.cpu()``) that then meets a model
tensor; on this CPU model both are real CPU tensors. Those places are few and listed in docs/testing.md.
"""

from __future__ import annotations

import os
import sys

import torch
from torch.overrides import TorchFunctionMode

FOREIGN = torch.device("meta")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH = os.path.dirname(torch.__file__) + os.sep

_FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.eye, torch.arange, torch.linspace, torch.logspace,
    torch.tensor, torch.as_tensor, torch.rand, torch.randn, torch.randint, torch.randperm, torch.scalar_tensor,
    torch.empty_strided, torch.tril_indices, torch.triu_indices,
}
# moves and metadata: mixing devices here is legitimate (or, for indices, accepted by CUDA)
_EXEMPT = {"to", "cpu", "cuda", "copy_", "__get__", "__set__", "__setitem__", "device", "data_ptr", "is_meta",
           "size", "dim", "numel", "__len__", "__repr__", "__format__", "type", "get_device", "untyped_storage",
           "_version", "set_", "__reduce_ex__", "tolist"}


class DeviceMismatch(RuntimeError):
    """An op received tensors on two devices (model device and the foreign stand-in for the CPU)."""


def _ours_called(ours: tuple[str, ...], depth: int = 2) -> str | None:
    """The file of the first caller outside torch and this module, when it is in ``ours``."""
    f = sys._getframe(depth)
    while f is not None and (f.f_code.co_filename.startswith(_TORCH) or f.f_code.co_filename == __file__):
        f = f.f_back
    if f is not None and f.f_code.co_filename.startswith(ours):
        return f"{os.path.relpath(f.f_code.co_filename, _ROOT)}:{f.f_lineno} ({f.f_code.co_name})"
    return None


def _tensors(x, out: list) -> list:
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            _tensors(y, out)
    elif isinstance(x, dict):
        for y in x.values():
            _tensors(y, out)
    return out


class ForeignDefaultDevice(TorchFunctionMode):
    """See the module docstring. ``injected`` lists the call sites that got the foreign device."""

    def __init__(self, roots: tuple[str, ...] = ("pat", "baselines", "bench")):
        super().__init__()
        self.ours = tuple(os.path.join(_ROOT, p) + os.sep for p in roots)
        self.injected: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is None:
            site = _ours_called(self.ours)
            if site is not None:
                kwargs["device"] = FOREIGN
                self.injected.append(site)
        else:
            name = getattr(func, "__name__", "")
            if name not in _EXEMPT:
                devs = {t.device for t in _tensors((args, kwargs), []) if t.dim() > 0}
                if len(devs) > 1:
                    site = _ours_called(self.ours) or "outside our packages"
                    raise DeviceMismatch(f"{name}: tensors on {sorted(map(str, devs))}, called from {site}")
        return func(*args, **kwargs)
