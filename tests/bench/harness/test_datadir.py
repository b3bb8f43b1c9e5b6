"""The data directory as evaluation uses it: sha256 check, missing files, resolution order, CLI errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bench.harness import datadir
from bench.harness import evaluation as ev
from bench.harness.datadir import DataError

DATA = os.environ.get("PAT_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA, reason="PAT_DATA_DIR not set")


def _mini_data_dir(tmp_path: Path, names: list[str]) -> Path:
    """A data directory holding only ``names`` (copied from $PAT_DATA_DIR) and the real manifest."""
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(Path(DATA) / "manifest.json", root / "manifest.json")
    for n in names:
        rel = datadir.DATASETS[n]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(DATA) / rel, root / rel)
    return root


class ExplodingModel:
    """Any use of the model fails: errors must come before model work."""

    def __getattr__(self, name):
        raise AssertionError(f"model touched ({name}) before input checks")


@needs_data
def test_every_task_file_matches_the_manifest():
    manifest = {f["file"]: f["sha256"] for f in json.loads((Path(DATA) / "manifest.json").read_text())["files"]}
    for task in ev.STD_TASKS:
        assert datadir.dataset_sha256(task) == manifest[datadir.DATASETS[task]]
    for name in ("wikitext2", "ptb"):
        assert datadir.dataset_sha256(name) == manifest[datadir.DATASETS[name]]


@needs_data
def test_altered_file_fails_the_sha256_check(tmp_path):
    root = _mini_data_dir(tmp_path, ["openbookqa"])
    f = root / datadir.DATASETS["openbookqa"]
    f.write_bytes(f.read_bytes().replace(b'"answerKey": "B"', b'"answerKey": "A"', 1))
    with pytest.raises(DataError,
                       match=r"openbookqa/test\.jsonl: sha256 .* does not match manifest\.json.*fix: restore"):
        ev.evaluate_tasks(ExplodingModel(), None, ["openbookqa"], data_dir=root)


@needs_data
def test_truncated_file_fails_the_sha256_check(tmp_path):
    root = _mini_data_dir(tmp_path, ["winogrande"])
    f = root / datadir.DATASETS["winogrande"]
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="sha256"):
        ev.check_inputs(["paper_winogrande"], None, root)


@needs_data
def test_missing_dataset_names_dataset_path_and_fix(tmp_path):
    root = _mini_data_dir(tmp_path, ["piqa"])
    expected = root / "hellaswag" / "validation.jsonl"
    with pytest.raises(DataError) as err:
        ev.evaluate_tasks(ExplodingModel(), None, ["piqa", "hellaswag"], data_dir=root)
    msg = str(err.value)
    assert "dataset 'hellaswag' is missing" in msg and str(expected) in msg and "fix: point PAT_DATA_DIR" in msg


def test_no_data_dir_at_all(monkeypatch):
    monkeypatch.delenv("PAT_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # offline: no hub fallback, never a download attempt
    with pytest.raises(DataError, match="no data directory: pass --data-dir DIR or set PAT_DATA_DIR"):
        ev.evaluate_tasks(ExplodingModel(), None, ["piqa"])


@needs_data
def test_explicit_argument_wins_over_environment(tmp_path, monkeypatch):
    root = _mini_data_dir(tmp_path, ["boolq"])
    monkeypatch.setenv("PAT_DATA_DIR", str(tmp_path / "nowhere"))
    assert ev.resolve_task_files(["boolq"], root)["boolq"] == root / "boolq" / "validation.jsonl"
    with pytest.raises(DataError, match="does not exist"):
        ev.resolve_task_files(["boolq"])


def test_hub_fallback_only_without_data_dir_and_online(monkeypatch):
    monkeypatch.delenv("PAT_DATA_DIR", raising=False)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert ev.resolve_task_files(["piqa", "paper_arc_easy"]) == {"piqa": None, "paper_arc_easy": None}
    stock = ev.task_yaml_text("piqa", None)
    assert "dataset_path" not in stock and "data_files" not in stock and str(ev.stock_yaml_path("piqa")) in stock
    paper = ev.task_yaml_text("paper_arc_easy", None)
    assert "dataset_path: allenai/ai2_arc\n" in paper and "dataset_name: ARC-Easy\n" in paper
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="no data directory"):
        ev.resolve_task_files(["piqa"])
