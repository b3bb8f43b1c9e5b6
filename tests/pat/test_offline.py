"""The offline settings parser: one reading of HF_HUB_OFFLINE / HF_DATASETS_OFFLINE for every caller."""

import pytest

from pat.offline import datasets_offline, env_flag, hub_offline, online


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("on", True),
                                             ("0", False), ("", False), ("false", False), ("False", False),
                                             ("no", False), ("off", False), ("2", False)])
def test_env_flag_values(monkeypatch, value, expected):
    monkeypatch.setenv("PAT_TEST_FLAG", value)
    assert env_flag("PAT_TEST_FLAG") is expected


def test_unset_is_online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert not hub_offline() and not datasets_offline() and online()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert datasets_offline() and not hub_offline() and not online()
