"""GPU check of the accelerate FSDP2 path of the trainer: PAT on a tiny Llama, sharded vs plain, then resume.

Needs CUDA and accelerate (>= 1.6 for FSDP2); runs on one GPU or more. It trains PAT (peft LoRA inside) with
``bench.harness.train.train`` three ways and compares the losses:

1. plain: ``python scripts/gpu_fsdp_check.py worker OUT/plain`` (one process, no sharding);
2. FSDP2: ``accelerate launch --config_file OUT/fsdp2.yaml scripts/gpu_fsdp_check.py worker OUT/fsdp2``;
3. FSDP2 stopped after 3 steps (checkpoint every 3), then rerun to the end from the checkpoint.

Every completed run then finalizes (PAT's merge; under FSDP2 the full state is gathered into a plain copy on the main
process first, ``pat.merge.unsharded_copy``) and the main process saves the finalized model's logits on a fixed batch.

Run: ``python scripts/gpu_fsdp_check.py check OUT [--processes N]``; exit status 0 when all losses agree within
``TOL`` and the finalized models' logits within ``LOGIT_TOL`` (same class and hidden size).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOL = 1e-3  # bf16-free fp32 run; sharded reductions change the summation order only
LOGIT_TOL = 1e-4  # finalized models: the sharded run's is merged on the CPU, the plain run's on the GPU
FSDP2_YAML = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_processes: {n}
mixed_precision: 'no'
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_cpu_ram_efficient_loading: false
"""


def worker(out: Path, stop_after: int | None = None) -> None:
    import torch

    from bench.harness.data import load_instruction_data
    from pat.stage import RunContext
    from bench.harness.train import make_accelerator, train
    from pat.config import PATConfig
    from pat.method import PATStage
    from tests.bench.harness.test_train import CharTokenizer, budget, write_alpaca
    from tests.tiny import tiny_batch, tiny_model

    b = budget(steps=6, global_batch=8, micro_batch=2, lr=5e-3, warmup_steps=0)
    acc = make_accelerator(b)
    model, st = tiny_model("llama-gqa-tied"), PATStage(PATConfig(prune_ratio=0.25, hio_rank=4, lora_rank=4,
                                                                  lora_dropout=0.0, milestone_frac=0.5))
    torch.manual_seed(b.seed)
    model = st.prepare(model, RunContext(total_steps=b.total_steps, extra={"pipeline": ["pat"], "stage_index": 0,
                                                                            "phase": "prepare"}))
    out.mkdir(parents=True, exist_ok=True)
    rows = write_alpaca(out / "alpaca.jsonl") if acc.is_main_process else out / "alpaca.jsonl"
    acc.wait_for_everyone()
    data = load_instruction_data(str(rows), CharTokenizer(), b.seq_len, None, b.data_seed, None)
    rec = train(model, [st], b, data, out, checkpoint_every=3, stop_after=stop_after, progress=False, accelerator=acc)
    final = {}
    if rec["completed"]:  # every process: under FSDP2 the gather is a collective; the main one gets the model
        x = tiny_batch(seed=7)
        small = st.finalize(model, RunContext(total_steps=b.total_steps, extra={"heldout_ids": x}))
        if acc.is_main_process:
            with torch.no_grad():
                logits = small(input_ids=x.to(next(small.parameters()).device)).logits.cpu().tolist()
            final = {"logits": logits, "class": type(small).__name__, "hidden_size": small.config.hidden_size,
                     "merge_diff": st.report()["merge_max_abs_logit_diff"]}
    if acc.is_main_process:
        (out / "losses.json").write_text(json.dumps({"losses": rec["losses"], "type": rec["distributed_type"],
                                                     "completed": rec["completed"], "final": final}))


def check(out: Path, processes: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fsdp2.yaml").write_text(FSDP2_YAML.format(n=processes))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    launch = ["accelerate", "launch", "--config_file", str(out / "fsdp2.yaml"), __file__, "worker"]
    runs = {"plain": [sys.executable, __file__, "worker", str(out / "plain")],
            "fsdp2": launch + [str(out / "fsdp2")],
            "fsdp2-cut": launch + [str(out / "cut"), "3"],
            "fsdp2-resumed": launch + [str(out / "cut")]}
    for name, cmd in runs.items():
        p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
        print(f"{name}: exit {p.returncode}")
        if p.returncode:
            print(p.stderr[-4000:])
            return 1
    res = {n: json.loads((out / d / "losses.json").read_text()) for n, d in
           (("plain", "plain"), ("fsdp2", "fsdp2"), ("resumed", "cut"))}
    print(json.dumps({n: {k: v for k, v in r.items() if k != "final"} for n, r in res.items()}, indent=1))
    ok = res["fsdp2"]["type"] == "DistributedType.FSDP" and res["resumed"]["completed"]
    import torch

    ref = res["plain"]["final"]
    for n in ("fsdp2", "resumed"):
        diff = max(abs(a - b) for a, b in zip(res[n]["losses"], res["plain"]["losses"]))
        print(f"{n} vs plain: max |loss diff| {diff:.2e} (tolerance {TOL})")
        ok = ok and diff <= TOL and len(res[n]["losses"]) == len(res["plain"]["losses"])
        fin = res[n]["final"]
        same = fin["class"] == ref["class"] and fin["hidden_size"] == ref["hidden_size"]
        ldiff = float((torch.tensor(fin["logits"]) - torch.tensor(ref["logits"])).abs().max())
        print(f"{n} vs plain: finalized {fin['class']} hidden {fin['hidden_size']} (plain {ref['class']} "
              f"{ref['hidden_size']}), max |logit diff| {ldiff:.2e} (tolerance {LOGIT_TOL}), merge check "
              f"{fin['merge_diff']:.2e}")
        ok = ok and same and ldiff <= LOGIT_TOL and fin["merge_diff"] <= LOGIT_TOL
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
    else:
        n = int(sys.argv[sys.argv.index("--processes") + 1]) if "--processes" in sys.argv else 1
        raise SystemExit(check(Path(sys.argv[2]), n))
