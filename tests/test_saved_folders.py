"""Folders saved by earlier raptor_zoo code load with identical outputs through every loader (tests/fixtures/
saved_folders/README.md): raptor_zoo.from_pretrained, timm's local-dir: and transformers' AutoModel /
AutoModelForImageClassification. A layout change migrates these folders; it never breaks them."""
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForImageClassification

import raptor_zoo

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "saved_folders"
FOLDERS = sorted(json.loads((FIXTURES / "fixtures.json").read_text())["fixtures"])
# the transformers classes cover the token-state families (their last_hidden_state is the timm features)
TOKEN_STATES = [name for name in FOLDERS if name not in ("family_sam",)]


def expected(name: str) -> dict:
    return load_file(str(FIXTURES / name / "expected.safetensors"))


@pytest.mark.parametrize("name", FOLDERS)
def test_raptor_zoo_and_timm_load_the_folder_with_identical_outputs(name):
    want = expected(name)
    with torch.no_grad():
        model = raptor_zoo.from_pretrained(FIXTURES / name)
        features = model.forward_features(want["input"])
        features = features[0] if isinstance(features, (tuple, list)) else features
        assert torch.equal(features, want["features"])
        assert torch.equal(model(want["input"]), want["logits"])
        timm_model = timm.create_model(f"local-dir:{FIXTURES / name}", pretrained=True).eval()
        assert torch.equal(timm_model(want["input"]), want["logits"])


# RaptorForImageClassification reads DeiT's class-token head only, where timm averages it with the distillation head
TRANSFORMERS_DIFFER = ("family_deit_distilled",)


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason="distillation head"))
                                  if name in TRANSFORMERS_DIFFER else name for name in TOKEN_STATES])
def test_transformers_load_the_folder_with_the_same_outputs(name):
    """transformers runs the unrolled steps one by one (its RaptorStep layers): the same numbers up to float
    rounding (XCiT's cross-covariance attention differs in the last bits)."""
    want = expected(name)
    with torch.no_grad():
        hf_model = AutoModel.from_pretrained(FIXTURES / name).eval()
        torch.testing.assert_close(hf_model(want["input"]).last_hidden_state, want["features"], rtol=1e-6, atol=1e-6)
        classifier = AutoModelForImageClassification.from_pretrained(FIXTURES / name).eval()
        torch.testing.assert_close(classifier(want["input"]).logits, want["logits"], rtol=1e-6, atol=1e-6)


def test_the_shipped_digits_raptor_keeps_its_outputs():
    want = expected("raptor_digits_k2")
    with torch.no_grad():
        model = raptor_zoo.from_pretrained("raptor-digits-k2")
        assert torch.equal(model.forward_features(want["input"]), want["features"])
        assert torch.equal(model(want["input"]), want["logits"])
