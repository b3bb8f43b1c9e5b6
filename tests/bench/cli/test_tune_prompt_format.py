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
