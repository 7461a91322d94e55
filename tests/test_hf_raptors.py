"""Raptors of transformers teachers go back to transformers: saved folders load with the Auto classes and pipelines,
and benchmarks/coverage_transformers.py checks every converted model type (one in the default run, all 14 with
`-m sweep`; each type's exactness is tested in its family's test file)."""
import importlib.util
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification, pipeline

import raptor_zoo
from raptor_zoo.hf_convert import HF_CONVERTERS
from raptor_zoo.models.modeling_raptor import RaptorBackbone

REPO = Path(__file__).resolve().parent.parent


def _coverage_module():
    spec = importlib.util.spec_from_file_location("coverage_transformers", REPO / "benchmarks" /
                                                  "coverage_transformers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def offline(monkeypatch, tmp_path):
    cache = tmp_path / "hub_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))


def _photo(size: int = 40) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# one model type per timm family the converters produce: VisionTransformer, VisionTransformerDistilled, Eva, Beit,
# NaFlexVit
@pytest.mark.parametrize("model_type", ["dinov2_with_registers", "deit", "dinov3_vit", "beit", "siglip2_vision_model"])
def test_saved_raptor_loads_with_auto_classes_and_pipeline(model_type, offline, tmp_path):
    coverage = _coverage_module()
    teacher = raptor_zoo.load_teacher(coverage.tiny_model(model_type))
    raptor = raptor_zoo.from_teacher(teacher, block_schedule=(2, 2)).eval()
    folder = tmp_path / "raptor"
    raptor_zoo.save_pretrained(raptor, folder)
    x = torch.randn(2, 3, *teacher.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = raptor.forward_features(x)
        auto = AutoModel.from_pretrained(folder).eval()
        torch.testing.assert_close(auto(pixel_values=x).last_hidden_state, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(raptor_zoo.from_pretrained(folder).eval().forward_features(x), expected,
                                   rtol=0, atol=1e-5)
        via_timm = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        torch.testing.assert_close(via_timm.forward_features(x), expected, rtol=0, atol=1e-5)
        states = auto(pixel_values=x, output_hidden_states=True).hidden_states
        assert len(states) == teacher.depth + 1
    features = pipeline("image-feature-extraction", model=str(folder))(_photo())
    assert np.asarray(features).shape == (1, *expected.shape[1:])


def test_classifier_raptor_runs_the_image_classification_pipeline(offline, tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    hf_model = ViTForImageClassification(ViTConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128, image_size=32,
        patch_size=8, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"}, label2id={"cat": 0, "dog": 1, "fox": 2}))
    teacher = raptor_zoo.load_teacher(hf_model.eval())
    raptor = raptor_zoo.from_teacher(teacher, block_schedule=(2, 2)).eval()
    folder = tmp_path / "raptor"
    raptor_zoo.save_pretrained(raptor, folder)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    classifier = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(classifier(pixel_values=x).logits, raptor(x), rtol=0, atol=1e-5)
    # AutoBackbone.from_pretrained sends local folders to its timm path: a folder goes through AutoConfig
    backbone = AutoBackbone.from_config(AutoConfig.from_pretrained(folder, out_indices=[2, 4]))
    assert type(backbone) is RaptorBackbone
    backbone = RaptorBackbone.from_pretrained(folder, out_indices=[2, 4]).eval()
    assert [tuple(m.shape) for m in backbone(pixel_values=x).feature_maps] == [(2, 64, 4, 4)] * 2
    predictions = pipeline("image-classification", model=str(folder))(_photo())
    assert {p["label"] for p in predictions} == {"cat", "dog", "fox"}


def test_coverage_of_one_type_and_its_table():
    coverage = _coverage_module()
    row = coverage.check_type("vit")
    assert set(row["checks"]) == set(coverage.CHECKS)
    assert row["passed"], row["checks"]
    assert row["checks"]["exact"]["kind"] == "converted" and row["checks"]["exact"]["max_abs_diff"] == 0
    assert row["checks"]["flops"]["ratio"] == pytest.approx(1.0, abs=0.005)
    failing = dict(row, model_type="made_up", passed=False,
                   checks=dict(row["checks"], round_trip={"ok": False, "reason": "AutoModel 1e-3"}))
    table = coverage.coverage_table([row, failing])
    assert "| `vit` | ViTModel | VisionTransformer | converted (max abs 0.0e+00) | exact | yes | 1.0000 | yes | pass |" \
        in table
    assert "fails: AutoModel 1e-3 | **fail** |" in table


@pytest.mark.slow
@pytest.mark.sweep
def test_every_transformers_type_passes_coverage():
    """Issue 16's acceptance: 14 / 14 transformers model types pass every check."""
    coverage = _coverage_module()
    assert set(coverage.TINY_MODELS) <= set(HF_CONVERTERS)
    failing = {}
    for model_type in coverage.TINY_MODELS:
        row = coverage.check_type(model_type)
        if not row["passed"]:
            failing[model_type] = row["checks"]
    assert len(coverage.TINY_MODELS) == 14 and not failing, failing
