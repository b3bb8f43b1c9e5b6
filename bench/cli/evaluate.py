"""CLI: ``pat-bench evaluate --model M --tasks T1,T2 --limit N --out FILE.json`` (or ``python -m bench.evaluate``).

Thin wrapper around ``bench.harness.evaluation.evaluate``; bad arguments exit with status 2 and a one-line reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from bench.harness.datadir import DataError
from bench.harness.evaluation import VALID_TASKS, check_inputs, evaluate
from bench.harness.precision import EVAL_PRECISIONS
from pat.models import ModelNotFoundError, resolve


def _positive(kind: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind}: expected a positive integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{kind}: expected a positive integer, got {text!r}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pat-bench evaluate", description="Zero-shot accuracy (lm-eval, local data) and perplexity.")
    p.add_argument("--model", required=True, help="registered name (smollm2-135m) or a Hugging Face directory")
    p.add_argument("--tasks", default="", help=f"comma-separated, from: {' '.join(VALID_TASKS)}")
    p.add_argument("--limit", type=_positive("--limit"), default=None, help="documents per task (seeded subset)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the --limit subset")
    p.add_argument("--out", required=True, help="JSON file to write (atomically)")
    p.add_argument("--data-dir", default=None, help="data directory (default: $PAT_DATA_DIR)")
    p.add_argument("--ppl", default="", help="perplexity datasets: wikitext2,ptb")
    p.add_argument("--seq-len", type=_positive("--seq-len"), default=2048, help="perplexity window (128 or 2048)")
    p.add_argument("--stride", type=_positive("--stride"), default=None, help="window step (default: --seq-len)")
    p.add_argument("--max-tokens", type=_positive("--max-tokens"), default=None, help="first N test tokens only")
    p.add_argument("--batch-size", type=_positive("--batch-size"), default=8)
    p.add_argument("--precision", choices=EVAL_PRECISIONS, default="fp32",
                   help="forward precision: fp32 (stock lm-eval, default) or bf16 (autocast, fp32 logits)")
    p.add_argument("--threads", type=_positive("--threads"), default=None,
                   help="torch CPU threads (1 is fastest on a busy machine; default: torch's choice)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if not args.tasks and not args.ppl:
        print("error: --tasks or --ppl: give at least one task or perplexity dataset", file=sys.stderr)
        return 2
    try:
        check_inputs(args.tasks, args.ppl, args.data_dir)
        if args.stride is not None and args.stride > args.seq_len:
            raise ValueError(f"--stride: expected at most --seq-len ({args.seq_len}), got {args.stride}")
        if args.max_tokens is not None and args.max_tokens < args.seq_len:
            raise ValueError(f"--max-tokens: expected at least --seq-len ({args.seq_len}), got {args.max_tokens}")
        resolve(args.model)
    except (ValueError, DataError, ModelNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rec = evaluate(args.model, args.tasks, args.limit, ppl=args.ppl, seq_len=args.seq_len, stride=args.stride,
                   max_tokens=args.max_tokens, out=args.out, data_dir=args.data_dir, batch_size=args.batch_size,
                   seed=args.seed, precision=args.precision)
    summary = {t: round(m["acc"], 4) if m["acc"] is not None else None for t, m in rec.get("tasks", {}).items()}
    summary.update({f"ppl_{k}": round(v["ppl"], 3) for k, v in rec["perplexity"].items()})
    print(json.dumps(summary))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
