"""Shared test setup: every test runs against an empty, private, offline Hugging Face Hub cache."""
import pytest
from huggingface_hub import constants

# library test code vendored for tests/test_transformers_common.py and tests/test_timm_models.py, not tests itself
collect_ignore_glob = ["third_party/*"]
# the marks timm's and transformers' vendored tests carry (their own CI picks test groups by them)
LIBRARY_TEST_MARKS = (
    "base", "cfg", "cfg_nonstd", "forward", "backward", "torchscript", "features", "fxforward", "fxbackward",
    "accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test")


def pytest_configure(config):
    for mark in LIBRARY_TEST_MARKS:
        config.addinivalue_line("markers", f"{mark}: test group of timm's / transformers' own test suites")


@pytest.fixture(autouse=True)
def isolated_hf_hub(tmp_path_factory, monkeypatch):
    """A fresh HF_HOME / HF_HUB_CACHE per test, no token, HF_HUB_OFFLINE=1 (also for subprocesses via env).

    huggingface_hub reads these settings once at import, so its ``constants`` are patched as well as the
    environment. Yields the cache folder (``HF_HUB_CACHE``).
    """
    home = tmp_path_factory.mktemp("hf_home")
    cache = home / "hub"
    cache.mkdir()
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "RAPTOR_ZOO_HUB_ORG"):
        monkeypatch.delenv(name, raising=False)
    env = {"HF_HOME": home, "HF_HUB_CACHE": cache, "HF_TOKEN_PATH": home / "token", "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    yield cache
