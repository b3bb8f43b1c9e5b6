import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PAT_DATA_DIR" not in os.environ:
    _default = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
    if os.path.isdir(_default):
        os.environ["PAT_DATA_DIR"] = os.path.abspath(_default)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model (fp32), loaded once per session; skipped if the package is missing."""
    from pat.models import ModelNotFoundError, load

    try:
        return load("smollm2-135m")
    except ModelNotFoundError as e:  # pragma: no cover - CI installs it
        pytest.skip(str(e))


@pytest.fixture
def one_thread():
    """Tiny models run several times faster on one thread when the shared CPUs are oversubscribed."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
