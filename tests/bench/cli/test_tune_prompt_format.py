"""``pat-tune --prompt-format``: auto picks the tokenizer's chat template, the run record states the format."""

import json
import subprocess
import sys

import pytest

from bench.cli.tune import _parser, main
from tests.tiny import tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2):
    _, tok = smollm2  # SmolLM2-Instruct's tokenizer: it has a chat template
    d = tmp_path_factory.mktemp("tiny-llama-chat")
    tiny_model("llama-gqa-tied", vocab_size=len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_help_names_the_option_and_its_default():
    h = _parser().format_help()
    assert "--prompt-format {auto,chat,alpaca}" in h and "auto (chat" in h


@pytest.mark.parametrize("fmt, template", [(None, "chat"), ("alpaca", "alpaca")])
def test_run_record_states_the_format(tiny_dir, tmp_path, fmt, template):
    out = tmp_path / "pat"
    argv = ["--model", str(tiny_dir), "--ratio", "0.25", "--train-data", "alpaca", "--max-steps", "3",
            "--global-batch", "2", "--micro-batch", "2", "--seq-len", "96", "--hio-rank", "4", "--lora-rank", "2",
            "--out", str(out)] + (["--prompt-format", fmt] if fmt else [])
    assert main(argv) == 0
    run = json.loads((out / "run" / "run.json").read_text())
    assert run["prompt_format"] == template
    assert run["data"]["prompt_format"] == (fmt or "auto") and run["data"]["template"] == template
    assert json.loads((out / "pat_report.json").read_text())["prompt_format"] == template


def test_bad_value_exits_2_naming_the_option(tmp_path):
    argv = [sys.executable, "-m", "bench.cli.tune", "--ratio", "0.25", "--max-steps", "6", "--out",
            str(tmp_path / "o"), "--prompt-format", "chatml"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--prompt-format" in p.stderr and "'chatml'" in p.stderr
    assert "Traceback" not in p.stderr


def test_resume_in_another_format_is_refused_naming_both(tiny_dir, tmp_path, smollm2):
    """A checkpoint written in the chat format cannot silently continue on Alpaca examples (or the reverse)."""
    from transformers import AutoModelForCausalLM

    from baselines.lora import LoRAStage
    from bench.harness.budget import TrainBudget
    from bench.harness.train import run_pipeline
    from tests.bench.harness.test_train import write_alpaca

    tok = smollm2[1]
    data = str(write_alpaca(tmp_path / "a.jsonl"))
    b = TrainBudget(steps=4, global_batch=2, micro_batch=2, seq_len=96, lr=1e-3, warmup_steps=0, seed=0)

    def go(fmt):
        return run_pipeline(AutoModelForCausalLM.from_pretrained(tiny_dir), [LoRAStage(rank=2)], b, data,
                            tmp_path / "run", tokenizer=tok, checkpoint_every=2, stop_after=2, save_finalized=False,
                            progress=False, prompt_format=fmt)

    assert go("chat")["status"] == "stopped"
    with pytest.raises(ValueError, match=r"in the 'chat' prompt format, this one is 'alpaca'.*--prompt-format chat"):
        go("alpaca")
    assert go("auto")["steps_done"] == 4  # auto resolves to chat for this tokenizer: the same run continues
