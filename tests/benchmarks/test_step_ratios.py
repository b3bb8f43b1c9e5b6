"""Issue 18's speed ratios, measured side by side in one run on the same batches (SmolLM2-135M, the `cpu` suite).

Training arms (each in its own worker process, so that each keeps its own accelerate state and its own peak RSS):

- ``bare-fp32`` / ``bare-bf16``: peft LoRA-16 with the suite's arguments (dropout 0.05), forward with labels
  (transformers' own loss), backward, ``torch.optim.AdamW``; no accelerate, no clipping, no stages;
- ``lora-fp32`` / ``lora-bf16``: the harness step (``bench.harness.train.train_step``) of the suite's LoRA-16 run;
- ``pat-fp32`` / ``pat-bf16``: the harness step of the suite's ``pat_taylor`` run at 25 % (HIO-48 + LoRA-5,
  4.88 M trainable = LoRA-16's count within 0.2 %, i.e. matched trainable parameters).

Every arm steps through the same optimizer steps of the suite's data order (Alpaca, 8 x 128, data_seed 42), after
``WARMUP`` untimed steps. Each ratio's two arms run as a pair of worker processes stepping in turn (the order
alternates each round; two workers at a time bound the memory), and the ratio is the median over rounds of the
per-round ratio, so load from other processes on a shared CPU hits both arms of a pair alike.
Evaluation: the `cpu` suite's seven tasks on ``EVAL_LIMIT`` documents each, fp32 and bf16 alternated on one
in-memory model.

Goals (issue 18): harness LoRA / bare peft <= 1.15; harness PAT / harness LoRA <= 1.25; harness bf16 / fp32 <= 0.70;
evaluation bf16 / fp32 <= 0.60.

Run: ``PAT_BENCH_THREADS=1 pytest tests/benchmarks/test_step_ratios.py --benchmark-only -m slow -s``.
A worker alone: ``python tests/benchmarks/test_step_ratios.py worker lora-bf16`` (reads ``step N`` lines).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THREADS = int(os.environ.get("PAT_BENCH_THREADS", "1"))  # one thread: steadiest on a shared CPU
ROUNDS = int(os.environ.get("PAT_BENCH_ROUNDS", "5"))
WARMUP = 1
EVAL_LIMIT = int(os.environ.get("PAT_BENCH_EVAL_LIMIT", "6"))
EVAL_ROUNDS = int(os.environ.get("PAT_BENCH_EVAL_ROUNDS", "3"))
# (numerator, denominator) arms of each ratio; the first three carry the goals
PAIRS = (("lora-fp32", "bare-fp32"), ("pat-fp32", "lora-fp32"), ("lora-bf16", "lora-fp32"), ("pat-bf16", "pat-fp32"))
GOALS = {"lora-fp32 / bare-fp32": 1.15, "pat-fp32 / lora-fp32": 1.25, "lora-bf16 / lora-fp32": 0.70,
         "eval bf16/fp32": 0.60}


# ------------------------------------------------------------------------------------------- the arms
def suite_run(pipeline: str, precision: str):
    """``(stages, budget, spec)`` of the cpu suite's seed-0 run: ``lora`` (LoRA-16) or ``pat`` (pat_taylor 25 %)."""
    from bench.harness import registry
    from bench.harness.budget import TrainBudget
    from bench.harness.runner import stage_args
    from bench.harness.suites import expand, load_suite, resolve_stage

    name, ratio = ("lora", 0.0) if pipeline == "lora" else ("pat_taylor", 0.25)
    spec = next(r for r in expand(load_suite("cpu")) if r.pipeline == (name,) and r.ratio == ratio and r.seed == 0)
    base = resolve_stage(name, spec.stage_args)[0]
    stages = [registry.make_stage(base, **stage_args(spec, name, registry.stage_class(base)))]
    return stages, TrainBudget.from_dict({**spec.budget, "precision": precision}), spec


class HarnessArm:
    """The harness's prepared run (``setup_run``); ``step(i)`` is ``train_step`` of optimizer step ``i``."""

    def __init__(self, pipeline: str, precision: str):
        from bench.harness.data import load_instruction_data
        from bench.harness.train import collect_trainable, make_accelerator, setup_run
        from pat.models import load
        from pat.stage import RunContext

        stages, budget, spec = suite_run(pipeline, precision)
        model, tok = load("smollm2-135m")
        ctx = RunContext(tokenizer=tok, total_steps=budget.total_steps, seed=budget.seed,
                         extra={"pipeline": list(spec.pipeline), "stage_index": 0})
        for st in stages:
            model = st.prepare(model, ctx)
        self.data = load_instruction_data(spec.train_data, tok, budget.seq_len, budget.subset_size, budget.data_seed)
        self.run = setup_run(model, stages, budget, make_accelerator(budget),
                             collect_trainable(model, stages, budget.lr))
        self.run.engine_model.train()
        self.trainable = sum(p.numel() for _, p in self.run.named)

    def step(self, i: int) -> None:
        from bench.harness.train import train_step

        train_step(self.run, self.data, i)


class BareArm:
    """peft LoRA-16 (the suite's arguments): forward with labels, backward, AdamW, on the harness's batches."""

    def __init__(self, precision: str):
        import torch

        from bench.harness.data import load_instruction_data
        from pat.lora import apply_lora  # peft's get_peft_model
        from pat.models import load

        stages, self.budget, spec = suite_run("lora", precision)
        model, tok = load("smollm2-135m")
        self.model = apply_lora(model, stages[0].cfg).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=self.budget.lr)
        self.data = load_instruction_data(spec.train_data, tok, self.budget.seq_len, self.budget.subset_size,
                                          self.budget.data_seed)
        self.bf16 = precision == "bf16"
        self.trainable = sum(p.numel() for p in params)

    def step(self, i: int) -> None:
        import torch

        from bench.harness.data import global_batch_indices

        b = self.data.collate(global_batch_indices(len(self.data), i, self.budget.global_batch,
                                                   self.budget.data_seed))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def _previous_step() -> None:
    """The harness step before issue 18 (for the before/after ratio): logits at every position, and the HSM's mask
    and scale as two products over (B, T, d)."""
    import torch.nn.functional as F

    from bench.harness import train
    from bench.harness.data import IGNORE_INDEX
    from pat.modules import HybridSparsifier

    def full_logits_loss(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch["labels"][:, 1:].flatten(),
                               ignore_index=IGNORE_INDEX, reduction="sum")

    def hsm_forward(self, *args, **kwargs):
        import torch

        y = self.inner(*args, **kwargs)
        if self.identity_form is not None and self.L0 is not None and torch.is_grad_enabled():
            self._stash_identity_term()
        dtype = y.dtype
        h = y.to(torch.promote_types(y.dtype, torch.float32))
        if self.L0 is not None:
            z = h @ self.L0.t().to(h.dtype)
            if self.v is not None:
                z = z * self.v.to(h.dtype)
            h = h + z @ self.L1.t().to(h.dtype)
        h = h * self.mask.gate().to(h.dtype)
        if self.s is not None:
            h = h * self.s.to(h.dtype)
        return h.to(dtype)

    train._lm_loss_sum = full_logits_loss
    HybridSparsifier.forward = hsm_forward


def make_arm(arm: str):
    """``bare-P``, ``lora-P``, ``pat-P`` (P = fp32 / bf16); ``loraprev-P``, ``patprev-P``: the step before issue 18."""
    kind, precision = arm.split("-")
    if kind.endswith("prev"):
        _previous_step()
        kind = kind[:-len("prev")]
    return BareArm(precision) if kind == "bare" else HarnessArm(kind, precision)


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def worker(arm: str) -> None:
    """Serve ``step N`` lines on stdin with one JSON line each on stdout: the step's seconds and peak RSS so far."""
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    a = make_arm(arm)
    before = _rss_mib()
    peak, sampling = [before], [True]

    def sample():  # peak RSS during the steps (ru_maxrss would report the model-loading peak instead)
        while sampling[0]:
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
    print(json.dumps({"ready": arm, "trainable": a.trainable}), flush=True)
    for line in sys.stdin:
        i = int(line.split()[1])
        t = time.perf_counter()
        a.step(i)
        dt = time.perf_counter() - t
        print(json.dumps({"seconds": dt, "rss_before_steps_mib": round(before, 1), "rss_peak_mib": round(peak[0], 1),
                          "process_max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}),
              flush=True)
    sampling[0] = False


# ------------------------------------------------------------------------------------------- the runs
class Worker:
    def __init__(self, arm: str):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.arm = arm
        self.p = subprocess.Popen([sys.executable, __file__, "worker", arm], env=env, cwd=ROOT, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.info = self._read()

    def _read(self) -> dict:
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.arm} exited with {self.p.wait()}")
            if line.startswith("{"):
                return json.loads(line)

    def step(self, i: int) -> dict:
        self.p.stdin.write(f"step {i}\n")
        self.p.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=60)


def median_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def _pair(a: str, b: str, rounds: int) -> tuple[dict, dict, dict]:
    """Two workers, ``WARMUP`` untimed steps each, then ``rounds`` rounds of one step each (order alternating)."""
    workers = {}
    try:
        for arm in (a, b):  # started one after the other: loading is memory-heavy
            workers[arm] = Worker(arm)
        for w in workers.values():
            for i in range(WARMUP):
                w.step(i)
        times: dict[str, list[float]] = {a: [], b: []}
        last: dict[str, dict] = {}
        for r in range(rounds):
            for arm in ((a, b) if r % 2 == 0 else (b, a)):
                last[arm] = workers[arm].step(WARMUP + r)
                times[arm].append(last[arm]["seconds"])
    finally:
        for w in workers.values():
            w.close()
    return times, {arm: w.info["trainable"] for arm, w in workers.items()}, last


def train_ratios(pairs=PAIRS, rounds: int = ROUNDS) -> dict:
    """Each ratio from its own pair of workers stepping in turn (two processes alive at a time: ~3-4 GB each)."""
    out: dict = {"pairs": {}, "trainable": {}, "memory": {}, "ratios": {}, "median_s": {}}
    for a, b in pairs:
        times, trainable, last = _pair(a, b, rounds)
        name = f"{a} / {b}"
        out["pairs"][name] = times
        out["ratios"][name] = median_ratio(times, a, b)
        out["trainable"].update(trainable)
        out["memory"].update({k: {x: y for x, y in m.items() if x != "seconds"} for k, m in last.items()})
        out["median_s"].update({f"{k} (in {name})": statistics.median(t) for k, t in times.items()})
    return out


def eval_ratio(limit: int = EVAL_LIMIT, rounds: int = EVAL_ROUNDS) -> dict:
    """The cpu suite's tasks on ``limit`` documents each: fp32 and bf16 alternated on one in-memory model."""
    import torch

    from bench.harness.evaluation import evaluate_tasks, load_model
    from bench.harness.suites import load_suite

    torch.set_num_threads(THREADS)
    ev = load_suite("cpu").eval
    model, tok = load_model("smollm2-135m")
    model.eval()
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(rounds):
        for p in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            t = time.perf_counter()
            evaluate_tasks(model, tok, list(ev["tasks"]), limit=limit, seed=ev["seed"], batch_size=ev["batch_size"],
                           precision=p)
            times[p].append(time.perf_counter() - t)
    return {"times": times, "limit": limit, "ratio": median_ratio(times, "bf16", "fp32")}


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PAT_DATA_DIR"), reason="PAT_DATA_DIR not set")
def test_step_and_eval_ratios(benchmark):
    res: dict = {}

    def measure():
        res["train"] = train_ratios()
        res["eval"] = eval_ratio()

    benchmark.pedantic(measure, rounds=1, iterations=1)
    r = res["train"]["ratios"]
    got = {k: r[k] for k in GOALS if k in r}
    got["eval bf16/fp32"] = res["eval"]["ratio"]
    benchmark.extra_info.update(threads=THREADS, rounds=ROUNDS, **res, goals=GOALS, headline=got,
                                load_average=os.getloadavg())
    print(json.dumps({"headline": got, "ratios": r, "eval": res["eval"], "memory": res["train"]["memory"]}, indent=1))
    assert abs(res["train"]["trainable"]["pat-fp32"] / res["train"]["trainable"]["lora-fp32"] - 1) < 0.05  # matched
    missed = {k: v for k, v in got.items() if v > GOALS[k]}
    assert not missed, f"goals missed: {missed} (goals {GOALS})"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        worker(sys.argv[2])
    else:  # python tests/benchmarks/test_step_ratios.py [OUT.json [A/B,C/D [no-eval]]]: the measurement, no pytest
        pairs = tuple(tuple(p.split("/")) for p in sys.argv[2].split(",")) if len(sys.argv) > 2 else PAIRS
        out = {"train": train_ratios(pairs), "threads": THREADS, "rounds": ROUNDS}
        if "no-eval" not in sys.argv:
            out["eval"] = eval_ratio()
        out["load_average"] = os.getloadavg()
        text = json.dumps(out, indent=1)
        print(text)
        if len(sys.argv) > 1:
            Path(sys.argv[1]).write_text(text + "\n")
