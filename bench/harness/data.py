"""Instruction data for tuning (spec §9) and calibration text for the one-shot pruners.

Sources, by ``train_data``:

* a dataset name of the data directory (``"alpaca"``), resolved and sha256-checked by ``bench.harness.datadir``;
* a local ``.jsonl`` / ``.json`` file;
* a hub dataset id (``"MBZUAI/LaMini-instruction"``) when the hub is online (``HF_DATASETS_OFFLINE`` unset).

Rows are either Alpaca (``instruction``, ``input``, ``output``) or LaMini-style (``instruction``, ``response``).
Each becomes a prompt followed by the response and the end-of-turn token, in the ``prompt_format`` of
``pat.prompts``: the paper's Alpaca prompt (``format_prompt``) + response + EOS, or the tokenizer's chat template
(``"chat"``), or whichever fits the tokenizer (``"auto"``). Labels are ``-100`` on the prompt, so the loss is on
response tokens (and the end-of-turn token) only. Examples are truncated at ``seq_len`` (the response end is cut
first); an example whose response does not start within ``seq_len`` is dropped and counted. Selection is a seeded
shuffle of all rows, then the first ``subset_size`` rows; the record names source, sha256, size and seed.

The training order is an endless stream of seeded per-epoch permutations (``global_batch_indices``), so the
examples of optimizer step ``s`` are a pure function of ``(s, seed)``: resume needs only the step counter.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from bench.harness.datadir import DATASETS, DataError, dataset_path, dataset_sha256, sha256_file
from pat.offline import datasets_offline
from pat.prompts import (  # noqa: F401  (PROMPT_* re-exported: the harness's names for the paper's template)
    IGNORE_INDEX, PROMPT_NO_INPUT, PROMPT_WITH_INPUT, alpaca_prompt, check_prompt_format, encode_example,
    resolve_prompt_format, row_fields,
)

log = logging.getLogger(__name__)


def format_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt (spec §9 ``llama2-base-alpaca``), ending in ``"### Response:\\n"``."""
    return alpaca_prompt(instruction, input)


def normalize_row(row: dict[str, Any], where: str = "row") -> tuple[str, str]:
    """``(Alpaca prompt, response)`` of an Alpaca or LaMini-style row; ``ValueError`` naming the missing field."""
    instruction, inp, response = row_fields(row, where)
    return format_prompt(instruction, inp), response


def _read_rows(train_data: str, data_dir: str | os.PathLike | None) -> tuple[list[dict], dict[str, Any]]:
    """Raw rows and their provenance for a dataset name, a file path or a hub id."""
    if train_data in DATASETS:
        path = dataset_path(train_data, data_dir)
        prov = {"source": train_data, "path": str(path), "sha256": dataset_sha256(train_data, data_dir)}
    elif Path(train_data).expanduser().is_file():
        path = Path(train_data).expanduser().resolve()
        prov = {"source": str(path), "path": str(path), "sha256": sha256_file(path)}
    else:
        return _read_hub(train_data)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of objects")
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows, prov


def _read_hub(train_data: str) -> tuple[list[dict], dict[str, Any]]:
    offline = datasets_offline()
    if offline or train_data.count("/") != 1:
        raise DataError(
            f"train_data '{train_data}' is not a known dataset ({', '.join(sorted(DATASETS))}), not a file, and "
            f"{'the hub is offline (HF_DATASETS_OFFLINE=1)' if offline else 'not a hub id owner/name'}; "
            "fix: pass a dataset name, a .jsonl file, or a hub id with network access"
        )
    from datasets import load_dataset

    ds = load_dataset(train_data, split="train")
    return list(ds), {"source": train_data, "path": None, "sha256": None, "hub_fingerprint": ds._fingerprint}


@dataclass
class InstructionData:
    """Tokenized examples: ``input_ids[i]`` and ``labels[i]`` (``-100`` on the prompt), plus the selection record."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    pad_id: int
    record: dict[str, Any]

    def __len__(self) -> int:
        return len(self.input_ids)

    def collate(self, idx: list[int]) -> dict[str, torch.Tensor]:
        """Right-padded batch of examples ``idx``: ``input_ids``, ``labels``, ``attention_mask``, each (b, t)."""
        t = max(len(self.input_ids[i]) for i in idx)
        cpu = torch.device("cpu")  # built on the CPU on purpose, like a DataLoader's collate; the loop moves it
        ids = torch.full((len(idx), t), self.pad_id, dtype=torch.long, device=cpu)
        lab = torch.full((len(idx), t), IGNORE_INDEX, dtype=torch.long, device=cpu)
        att = torch.zeros((len(idx), t), dtype=torch.long, device=cpu)
        for r, i in enumerate(idx):
            n = len(self.input_ids[i])
            ids[r, :n] = torch.tensor(self.input_ids[i], device=cpu)
            lab[r, :n] = torch.tensor(self.labels[i], device=cpu)
            att[r, :n] = 1
        return {"input_ids": ids, "labels": lab, "attention_mask": att}


def load_instruction_data(
    train_data: str,
    tokenizer,
    seq_len: int,
    subset_size: int | None = None,
    seed: int = 42,
    data_dir: str | os.PathLike | None = None,
    prompt_format: str = "alpaca",
) -> InstructionData:
    """Load, select (seeded shuffle + first ``subset_size``), format and tokenize instruction data.

    Returns:
        ``InstructionData`` whose ``record`` holds source, sha256, rows, subset size and seed, examples used and
        dropped (no response token within ``seq_len``), and the format: ``prompt_format`` (as asked) and
        ``template`` (``"chat"`` or ``"alpaca"``, ``"auto"`` resolved for this tokenizer).
    """
    template = resolve_prompt_format(tokenizer, check_prompt_format(prompt_format))
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token_id; the trainer appends EOS to every response")
    rows, prov = _read_rows(train_data, data_dir)
    if not rows:
        raise DataError(f"train_data '{train_data}' has no rows")
    if subset_size is not None and subset_size > len(rows):
        raise ValueError(f"subset_size = {subset_size} is larger than the {len(rows)} rows of '{train_data}'")
    # seeded selection on the CPU on purpose: the same examples on every device
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed), device="cpu").tolist()
    chosen = order[: subset_size or len(rows)]
    ids, labels, dropped = [], [], 0
    for i in chosen:
        x, y = encode_example(tokenizer, rows[i], template, seq_len, where=f"{prov['source']} row {i}")
        if all(v == IGNORE_INDEX for v in y):
            dropped += 1
            continue
        ids.append(x)
        labels.append(y)
    if not ids:
        raise ValueError(f"no example of '{train_data}' has a response token within seq_len = {seq_len}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    record = dict(prov, rows=len(rows), subset_size=subset_size, data_seed=seed, examples=len(ids),
                  dropped_no_response=dropped, seq_len=seq_len, prompt_format=prompt_format,
                  template=template,
                  response_tokens=sum(sum(v != IGNORE_INDEX for v in y) for y in labels))
    log.info("instruction data %s: %d examples (%d dropped), seed %d, %s format", prov["source"], len(ids), dropped,
             seed, template)
    return InstructionData(ids, labels, pad, record)


@lru_cache(maxsize=8)
def _epoch_perm(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)
    return tuple(torch.randperm(n, generator=g, device="cpu").tolist())  # CPU on purpose: same order on any device


def global_batch_indices(n: int, step: int, global_batch: int, seed: int) -> list[int]:
    """Example indices of optimizer step ``step`` (0-based): a slice of an endless stream of per-epoch permutations."""
    start = step * global_batch
    out = []
    for pos in range(start, start + global_batch):
        epoch, k = divmod(pos, n)
        out.append(_epoch_perm(n, seed, epoch)[k])
    return out
