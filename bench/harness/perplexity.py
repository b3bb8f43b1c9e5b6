"""Token perplexity on WikiText-2 test and PTB test, the pruning-paper way.

Text construction (as in SparseGPT, Wanda, LLM-Pruner, SliceGPT):

- ``wikitext2``: ``"\\n\\n".join(row["text"] for row in wikitext-2-raw-v1 test)``;
- ``ptb``: ``" ".join(row["sentence"] for row in ptb_text_only test)``.

The whole text is tokenized once with the model's tokenizer (its default special tokens), optionally cut to the first
``max_tokens`` tokens, and split into windows of ``seq_len`` tokens.

- **Default, ``stride == seq_len``**: non-overlapping windows, the LLM-Pruner / SliceGPT / Wanda convention. The
  remainder shorter than ``seq_len`` is dropped. Each window is scored independently, all ``seq_len - 1`` next-token
  predictions count.
- **``stride < seq_len``**: sliding windows, the Hugging Face "perplexity of fixed-length models" recipe. The first
  window scores all its predictions, every later window only its last ``stride`` tokens, which then see up to
  ``seq_len - stride`` tokens of context.

``ppl = exp(sum of token NLL / number of scored tokens)``. With equal-length non-overlapping windows this equals
``exp(mean of per-window mean NLL)`` (the LLM-Pruner formula). ``seq_len`` 128 is the LLM-Pruner/FLAP convention,
2048 the SliceGPT/Wanda one; the two are not comparable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import torch

from bench.harness.datadir import dataset_path, dataset_sha256
from bench.harness.precision import check_precision, eval_precision

log = logging.getLogger(__name__)

PPL_DATASETS = ("wikitext2", "ptb")


def load_text(dataset: str, data_dir: str | os.PathLike | None = None) -> str:
    """The evaluation text of ``dataset`` (``wikitext2`` or ``ptb``), built from the sha256-checked local file."""
    if dataset not in PPL_DATASETS:
        raise ValueError(f"dataset: unknown perplexity dataset '{dataset}'; expected one of {', '.join(PPL_DATASETS)}")
    path = dataset_path(dataset, data_dir)
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if dataset == "wikitext2":
        return "\n\n".join(r["text"] for r in rows)
    return " ".join(r["sentence"] for r in rows)


def window_starts(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int]]:
    """Windows as ``(start, n_scored)``: each window is ``ids[start:start + seq_len]``, its last ``n_scored`` targets
    count.

    Non-overlapping (``stride == seq_len``): windows ``[0, L), [L, 2L), ...``, each scoring ``L - 1`` targets.
    Sliding (``stride < seq_len``): starts ``0, stride, 2*stride, ...``; the first window scores ``L - 1``
    targets, later ones ``stride``. Only full windows are used.
    """
    if n_tokens < seq_len:
        return []
    out = [(0, seq_len - 1)]
    start = stride
    while start + seq_len <= n_tokens:
        out.append((start, seq_len - 1 if stride >= seq_len else stride))
        start += stride
    return out


def _tokenize(tokenizer, text: str, max_tokens: int | None) -> tuple[torch.Tensor, int | None]:
    """Token ids (N,) of ``text``, cut to ``max_tokens``; and the token count of the whole text (None if not counted).

    With ``max_tokens`` only a character prefix is tokenized (at least 64 tokens more than needed, so the kept
    tokens equal those of the whole text: tokenizers do not merge across that far); this keeps small runs cheap.
    """
    if max_tokens is not None:
        chars = 8 * (max_tokens + 64)
        while chars < len(text):
            ids = tokenizer(text[:chars], return_tensors="pt").input_ids[0]
            if ids.numel() >= max_tokens + 64:
                return ids[:max_tokens], None
            chars *= 2
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    total = int(ids.numel())
    return (ids if max_tokens is None else ids[:max_tokens]), total


def heldout_windows(tokenizer, dataset: str = "wikitext2", seq_len: int = 128, n: int = 16,
                    data_dir=None) -> torch.Tensor:
    """The first ``n`` non-overlapping windows (n, seq_len) of ``dataset``'s evaluation text: the same tokens the
    perplexity metric starts with (for in-run measurements; never for calibration or selection)."""
    ids, _ = _tokenize(tokenizer, load_text(dataset, data_dir), n * seq_len)
    if ids.numel() < n * seq_len:
        raise ValueError(f"heldout_windows: {dataset} has {ids.numel()} tokens; need n * seq_len = {n * seq_len}")
    return ids[: n * seq_len].reshape(n, seq_len)


@torch.no_grad()
def _window_nll(model, batch: torch.Tensor, n_scored: list[int]) -> list[float]:
    """Sum of NLL over the last ``n_scored[i]`` targets of each row of ``batch`` (B, L): one sum per row."""
    logits = model(input_ids=batch).logits[:, :-1, :].float()  # (B, L-1, V)
    targets = batch[:, 1:]  # (B, L-1)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, L-1)
    return [float(nll[i, -k:].double().sum()) for i, k in enumerate(n_scored)]


def perplexity(
    model,
    tokenizer,
    dataset: str = "wikitext2",
    seq_len: int = 2048,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 1,
    data_dir=None,
    precision: str = "fp32",
) -> dict:
    """Token perplexity of ``model`` on the test split of ``dataset``.

    Args:
        model: a causal LM returning ``.logits`` of shape (B, L, V) for ``input_ids`` (B, L).
        tokenizer: its tokenizer.
        dataset: ``"wikitext2"`` or ``"ptb"``.
        seq_len: window length in tokens (128: LLM-Pruner/FLAP; 2048: SliceGPT/Wanda).
        stride: step between windows; ``None`` means ``seq_len`` (non-overlapping windows).
        max_tokens: use only the first ``max_tokens`` tokens of the test text (bounds CPU cost).
        batch_size: windows per forward pass.
        data_dir: data directory (default: ``$PAT_DATA_DIR``).
        precision: ``fp32`` or ``bf16`` (autocast forwards, fp32 logits; ``bench.harness.precision``).
    Returns:
        ``{"dataset", "ppl", "seq_len", "stride", "n_tokens", "max_tokens", "sha256", ...}``; ``n_tokens`` is the
        number of tokens inside the evaluated windows, ``n_scored`` the number of predicted (scored) tokens,
        ``total_tokens`` the size of the whole tokenized test text (None when ``max_tokens`` made counting it
        unnecessary), ``windows`` the per-window ``{"nll": [sum of NLL], "tokens": [scored tokens]}`` (in window
        order; two runs are compared window by window, ``bench.harness.stats``).
    """
    stride = seq_len if stride is None else stride
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len: expected an integer >= 2, got {seq_len!r}")
    if not isinstance(stride, int) or not 1 <= stride <= seq_len:
        raise ValueError(f"stride: expected an integer in [1, seq_len={seq_len}], got {stride!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < seq_len):
        raise ValueError(f"max_tokens: expected an integer >= seq_len ({seq_len}) or None, got {max_tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    check_precision(precision)
    text = load_text(dataset, data_dir)
    sha = dataset_sha256(dataset, data_dir)
    ids, total_tokens = _tokenize(tokenizer, text, max_tokens)
    windows = window_starts(int(ids.numel()), seq_len, stride)
    if not windows:
        raise ValueError(f"seq_len: {seq_len} exceeds the {ids.numel()} available tokens of {dataset}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    window_nll: list[float] = []
    try:
        with eval_precision(model, precision):
            for b in range(0, len(windows), batch_size):
                chunk = windows[b:b + batch_size]
                batch = torch.stack([ids[s:s + seq_len] for s, _ in chunk]).to(device)
                window_nll += _window_nll(model, batch, [k for _, k in chunk])
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    window_tokens = [k for _, k in windows]
    nll_sum, n_scored = sum(window_nll), sum(window_tokens)
    last_end = windows[-1][0] + seq_len
    result = {
        "dataset": dataset,
        "metric": "token_perplexity",
        "ppl": math.exp(nll_sum / n_scored),
        "seq_len": seq_len,
        "stride": stride,
        "n_tokens": last_end if stride < seq_len else len(windows) * seq_len,
        "n_scored": n_scored,
        "n_windows": len(windows),
        "max_tokens": max_tokens,
        "total_tokens": total_tokens,
        "sha256": sha,
        "windows": {"nll": [round(x, 6) for x in window_nll], "tokens": window_tokens},
        "convention": "non-overlapping windows (LLM-Pruner/SliceGPT)" if stride == seq_len else "sliding windows (HF)",
        "precision": precision,
        "seconds": round(seconds, 3),
    }
    log.info("%s ppl %.4f (seq_len %d, stride %d, %d tokens, %.1fs)", dataset, result["ppl"], seq_len, stride,
             result["n_tokens"], seconds)
    return result
