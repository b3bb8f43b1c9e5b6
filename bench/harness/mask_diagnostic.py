"""Why the paper's mask selection cannot act at CPU budgets: count-loss vs task gradient on the mask proxy.

``python -m bench.harness.mask_diagnostic`` prepares PAT on SmolLM2-135M with the cpu suite's PAT settings
(``[stages.pat]`` and ``[budget.cpu_pat]`` of ``bench/suites/cpu.toml``), runs ``--batches`` micro-batches of the
suite's training data in the order the trainer would use them (one forward/backward each), and measures on the
mask proxy W_M (d channels):

- ``count_dominates``: the fraction of (batch, channel) pairs where ``|dL_active/dW_M_i| > |dL_task/dW_M_i|``
  (L_active: the count loss as configured; L_task: the LM loss as the trainer normalises it);
- ``snr_median``: the median over channels of ``|mean_b g_i| / std_b g_i`` for the task gradient ``g`` over the
  batches (how well one channel's task signal stands out from batch noise);
- medians of both gradients' magnitudes.

It prints one JSON object; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport (same API)
    import tomli as tomllib

import torch

SUITE = Path(__file__).resolve().parents[1] / "suites" / "cpu.toml"


def measure(model_name: str = "smollm2-135m", ratio: float = 0.25, batches: int = 8, step: int = 0,
            suite: Path = SUITE, data_dir: str | None = None) -> dict:
    """Run the measurement; returns the numbers and the settings they came from."""
    from bench.harness.budget import TrainBudget
    from bench.harness.data import global_batch_indices, load_instruction_data
    from pat.stage import RunContext
    from bench.harness.train import _lm_loss_sum, collect_trainable
    from pat import PATConfig, PATStage, get_mask, set_step
    from pat.losses import active_loss
    from pat.models import load

    spec = tomllib.loads(Path(suite).read_text())
    pat_args = dict(spec["stages"]["pat"])
    budget = TrainBudget.from_dict(spec["budget"]["cpu_pat"])
    torch.manual_seed(budget.seed)
    model, tok = load(model_name)
    stage = PATStage(PATConfig(prune_ratio=ratio, **pat_args))
    model = stage.prepare(model, RunContext(tokenizer=tok, total_steps=budget.total_steps, seed=budget.seed))
    collect_trainable(model, [stage], budget.lr)
    mask = get_mask(model)
    set_step(model, step)
    cfg = mask.cfg
    data = load_instruction_data(spec["suite"]["train_data"], tok, budget.seq_len, budget.subset_size,
                                 budget.data_seed, data_dir,
                                 prompt_format=spec["suite"].get("prompt_format", "alpaca"))
    la = active_loss(mask, mask.target, cfg.active_loss, cfg.active_weight, cfg.active_margin)
    g_count = torch.autograd.grad(la, mask.proxy)[0]
    model.train()
    task = []
    t0 = time.perf_counter()
    for b in range(batches):
        idx = global_batch_indices(len(data), b, budget.global_batch, budget.data_seed)[: budget.micro_batch]
        n_resp = sum(sum(v != -100 for v in data.labels[i][1:]) for i in idx)
        batch = {k: v.to(mask.proxy.device) for k, v in data.collate(idx).items()}  # collated on the CPU
        lm = _lm_loss_sum(model, batch) / max(1, n_resp)
        task.append(torch.autograd.grad(lm, mask.proxy)[0].detach())
    seconds = time.perf_counter() - t0
    g = torch.stack(task)  # (batches, d)
    snr = g.mean(0).abs() / g.std(0, unbiased=True).clamp_min(1e-30)
    return {
        "model": model_name, "ratio": ratio, "d": mask.proxy.numel(), "target_keep": mask.target,
        "step": step, "tau": mask.tau(), "beta": mask.beta(), "milestone_step": mask.s0, "batches": batches,
        "micro_batch": budget.micro_batch, "seq_len": budget.seq_len, "pat_args": pat_args,
        "active_loss": cfg.active_loss, "active_weight": cfg.active_weight,
        "count_dominates": float((g_count.abs()[None, :] > g.abs()).float().mean()),
        "snr_median": float(snr.median()),
        "count_grad_abs_median": float(g_count.abs().median()),
        "task_grad_abs_median": float(g.abs().median()),
        "task_mean_grad_abs_median": float(g.mean(0).abs().median()),
        "forward_backward_seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.harness.mask_diagnostic", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--ratio", type=float, default=0.25)
    p.add_argument("--batches", type=int, default=8, help="micro-batches (one forward/backward each)")
    p.add_argument("--step", type=int, default=0, help="schedule step at which to measure (tau, beta)")
    p.add_argument("--suite", default=str(SUITE), help="suite TOML with [stages.pat] and [budget.cpu_pat]")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    if a.batches < 2:
        p.error(f"--batches {a.batches}: expected an integer >= 2 (the SNR needs a spread over batches)")
    if a.threads:
        torch.set_num_threads(a.threads)
    res = measure(a.model, a.ratio, a.batches, a.step, Path(a.suite), a.data_dir)
    try:
        res["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent, check=False).stdout.strip() or None
    except OSError:
        res["commit"] = None
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
