"""preprocessor_config.json: AutoImageProcessor and the two vision pipelines on a Raptor folder, offline."""
import json
from importlib import resources

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform
from transformers import AutoImageProcessor, pipeline

import raptor_zoo
from raptor_zoo import hub
from raptor_zoo.data import build_transform, load_digits_split
from raptor_zoo.models.image_processing_raptor import RaptorImageProcessor
from raptor_zoo.teachers import load_teacher

DIGITS_FOLDER = resources.files("raptor_zoo") / "assets" / "raptor-digits-k2"


@pytest.fixture(scope="module")
def digits():
    return load_digits_split("test").select(range(6))


def test_shipped_processor_is_what_save_pretrained_writes():
    shipped = json.loads((DIGITS_FOLDER / hub.PROCESSOR_NAME).read_text())
    assert shipped == hub.image_processor(hub.read_config(DIGITS_FOLDER)).to_dict()
    assert shipped["input_size"] == [3, 32, 32] and shipped["crop_pct"] == 1.0


def test_digits_processor_gives_the_data_modules_tensors(digits):
    processor = AutoImageProcessor.from_pretrained(str(DIGITS_FOLDER))
    assert isinstance(processor, RaptorImageProcessor)
    transform = build_transform(load_teacher("digits-vit").data_config, is_training=False)
    pixels = processor([example["image"] for example in digits])["pixel_values"]
    expected = torch.stack([transform(example["image"].convert("RGB")) for example in digits])
    assert torch.equal(pixels, expected)


def test_classification_pipeline_predicts_what_timm_predicts(digits):
    classify = pipeline("image-classification", model=str(DIGITS_FOLDER))
    model = raptor_zoo.from_pretrained("raptor-digits-k2")
    transform = build_transform(timm.data.resolve_model_data_config(model), is_training=False)
    with torch.no_grad():
        probs = model(torch.stack([transform(example["image"].convert("RGB")) for example in digits])).softmax(-1)
    for example, prob in zip(digits, probs):
        top = classify(example["image"])[0]
        assert int(top["label"].removeprefix("LABEL_")) == int(prob.argmax())
        assert top["score"] == pytest.approx(float(prob.max()), abs=1e-5)


def test_feature_extraction_pipeline_gives_the_normed_tokens(digits):
    extract = pipeline("image-feature-extraction", model=str(DIGITS_FOLDER))
    model = raptor_zoo.from_pretrained("raptor-digits-k2")
    image = digits[0]["image"]
    with torch.no_grad():
        expected = model.forward_features(build_transform(load_teacher("digits-vit").data_config, False)(
            image.convert("RGB"))[None])
    np.testing.assert_allclose(np.asarray(extract(image)), expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("crop_pct, interpolation", [(1.0, "bicubic"), (0.875, "bilinear")])
def test_processor_is_timms_eval_transform_at_any_image_size(crop_pct, interpolation):
    cfg = dict(input_size=(3, 24, 24), interpolation=interpolation, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4),
               crop_pct=crop_pct, crop_mode="center")
    processor = RaptorImageProcessor(**cfg)
    timm_eval = create_transform(**cfg, is_training=False)
    rng = np.random.default_rng(0)
    for shape in [(24, 24), (17, 23), (40, 31), (9, 60)]:  # odd crop margins included
        image = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        assert torch.equal(processor(image)["pixel_values"][0], timm_eval(image))


def test_saved_folder_carries_its_own_processor(tmp_path):
    model = timm.create_model("raptor_vit_small_patch14_reg4_dinov2_k2", img_size=28, embed_dim=32, num_heads=2,
                              block_schedule=(2, 1), num_classes=3,
                              pretrained_cfg_overlay=dict(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), crop_pct=0.9))
    folder = hub.save_pretrained(model, tmp_path / "tiny", card=False)
    processor = AutoImageProcessor.from_pretrained(str(folder))
    assert processor.data_config == dict(input_size=(3, 28, 28), interpolation="bicubic", mean=(0.1, 0.2, 0.3),
                                         std=(0.4, 0.5, 0.6), crop_pct=0.9, crop_mode="center")
    timm_config = timm.data.resolve_model_data_config(hub.load_pretrained(folder))
    assert processor.data_config == {key: tuple(v) if isinstance(v, list) else v for key, v in timm_config.items()}


def test_folder_config_json_gives_the_folders_processor():
    """A Raptor folder's config.json carries timm's pretrained_cfg, so transformers takes a local folder for a timm
    checkpoint and AutoImageProcessor builds the processor from config.json's dict (transformers >= 5.25): that dict
    gives the processor of preprocessor_config.json, not the defaults."""
    shipped = RaptorImageProcessor.from_dict(json.loads((DIGITS_FOLDER / hub.PROCESSOR_NAME).read_text()))
    from_config = RaptorImageProcessor.from_dict(json.loads((DIGITS_FOLDER / "config.json").read_text()))
    assert from_config.to_dict() == shipped.to_dict()
    assert from_config.data_config["input_size"] == (3, 32, 32) != RaptorImageProcessor().data_config["input_size"]


def test_options_the_processor_does_not_take_are_refused():
    with pytest.raises(TypeError, match=r"takes no options \['size'\].*pretrained_cfg in config.json"):
        AutoImageProcessor.from_pretrained(str(DIGITS_FOLDER), size={"height": 64, "width": 64})
    with pytest.raises(TypeError, match=r"takes no options \['do_resize'\]"):
        RaptorImageProcessor(do_resize=False)
    with pytest.raises(TypeError, match=r"takes no preprocessing options \['size'\]"):
        RaptorImageProcessor()(Image.new("RGB", (8, 8)), size=16)


def test_bad_processor_settings_name_the_problem():
    with pytest.raises(ValueError, match="crop_pct must lie in"):
        RaptorImageProcessor(crop_pct=1.5)
    with pytest.raises(ValueError, match="one mean and std per channel"):
        RaptorImageProcessor(input_size=(3, 32, 32), mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="return_tensors='pt'"):
        RaptorImageProcessor()(Image.new("RGB", (8, 8)), return_tensors="np")
