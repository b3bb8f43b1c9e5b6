"""Calibration text for one-shot pruners: ``n`` windows of ``seq_len`` tokens, seeded and recorded.

Sources:

- ``"c4"``: the C4 train sample of the data directory (``bench.harness.datadir.dataset_path("c4")``);
- ``"wikitext2_train"``: WikiText-2 *train* (``wikitext2/wikitext-2-raw-v1_train.jsonl`` in the data directory).
  ``shared/data`` does not ship it (only the test split, which must never be used for calibration), so asking for
  it raises ``DataError`` naming the expected file.

Documents are shuffled with ``seed``; each document long enough gives one window at a seeded random offset
(LLM-Pruner / SliceGPT draw random windows of random samples). When too few documents are long enough, the
remaining windows are cut from the seeded concatenation of the shorter ones, and then, if still too few, from the
concatenation of the long documents' text outside their windows (so that FLAP's 1024 x 128 fits the 1000-document C4
sample).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from bench.harness.datadir import DataError, dataset_path, dataset_sha256, resolve_data_dir, sha256_file

SOURCES = ("c4", "wikitext2_train")
WIKITEXT2_TRAIN = "wikitext2/wikitext-2-raw-v1_train.jsonl"


def _source_file(source: str, data_dir: str | os.PathLike | None) -> tuple[Path, str]:
    if source == "c4":
        return dataset_path("c4", data_dir), dataset_sha256("c4", data_dir)
    if source == "wikitext2_train":
        path = resolve_data_dir(data_dir) / WIKITEXT2_TRAIN
        if not path.is_file():
            raise DataError(f"calibration source 'wikitext2_train': {path} does not exist "
                            "(the data directory ships only "
                            "the WikiText-2 test split); fix: use source='c4' or add the train split as that file")
        return path, sha256_file(path)
    raise ValueError(f"calibration source: unknown '{source}'; expected one of {', '.join(SOURCES)}")


def load_calibration(
    tokenizer,
    source: str = "c4",
    n: int = 128,
    seq_len: int = 128,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Calibration tokens.

    Args:
        tokenizer: the model's tokenizer (no special tokens are added).
        source: ``"c4"`` or ``"wikitext2_train"``.
        n: number of windows; seq_len: tokens per window.
        seed: seeds the document order and the window offsets.
    Returns:
        ``(tokens, record)``: LongTensor (n, seq_len) and ``{"source", "sha256", "n", "seq_len", "seed"}``.
    """
    for name, v in (("n", n), ("seq_len", seq_len)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"calibration {name}: expected a positive integer, got {v!r}")
    path, sha = _source_file(source, data_dir)
    with open(path, encoding="utf-8") as fh:
        texts = [json.loads(line).get("text", "") for line in fh if line.strip()]
    gen = torch.Generator().manual_seed(seed)  # the sampling runs on the CPU on purpose: same windows on any device
    windows: list[list[int]] = []
    rest: list[int] = []
    leftover: list[int] = []
    for i in torch.randperm(len(texts), generator=gen, device="cpu").tolist():
        if len(windows) >= n:
            break
        if not texts[i].strip():
            continue
        ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"]
        if len(ids) > seq_len:
            start = int(torch.randint(0, len(ids) - seq_len + 1, (1,), generator=gen, device="cpu"))
            windows.append(ids[start:start + seq_len])
            leftover += ids[:start] + ids[start + seq_len:]
        else:
            rest += ids + [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else ids
    while len(windows) < n and len(rest) >= seq_len:
        windows.append(rest[:seq_len])
        rest = rest[seq_len:]
    while len(windows) < n and len(leftover) >= seq_len:
        windows.append(leftover[:seq_len])
        leftover = leftover[seq_len:]
    if len(windows) < n:
        raise ValueError(f"calibration source '{source}' gives only {len(windows)} windows of {seq_len} tokens; "
                         f"need n={n}")
    tokens = torch.tensor(windows[:n], dtype=torch.long, device="cpu")  # the stages move it to the model's device
    return tokens, {"source": source, "sha256": sha, "n": n, "seq_len": seq_len, "seed": seed}


def calibration_sampler(tokenizer, seed: int, data_dir: str | os.PathLike | None = None, seq_len: int = 128,
                        source: str = "c4"):
    """The ``RunContext.calibration`` callable: ``(n=128, seq_len=seq_len) -> LongTensor (n, seq_len)`` of
    ``source``.

    The callable carries ``source`` as an attribute, so a stage can record where its calibration came from.
    """
    def sample(n: int = 128, seq_len: int = seq_len) -> torch.Tensor:
        return load_calibration(tokenizer, source, n, seq_len, seed, data_dir)[0]

    sample.source = source  # type: ignore[attr-defined]
    return sample
