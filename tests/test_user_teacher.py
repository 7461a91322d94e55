"""A user's own teacher and images (issue 26): unlabelled data of every kind, settings that would waste a run settled
where they are decided, phases that belong to another teacher, embedding heads, and the teacher's own image
processor. The whole path through `accelerate launch` on a tiny transformers CLIP folder is the slow test at the end.
"""
import dataclasses
import json
import os
import subprocess
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    pipeline,
)
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

import raptor_zoo
import raptor_zoo.data
from raptor_zoo import cards
from raptor_zoo.distill import evaluate_fidelity
from raptor_zoo.recipes.distill import DistillConfig, load_datasets, stage_warmup_steps, training_function
from raptor_zoo.training import parse_config, start_run

REPO = Path(__file__).resolve().parent.parent
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=32,
              patch_size=8)


def photos(folder: Path, count: int, sub: str = "") -> Path:
    """``count`` random non-square photos (PNG) in ``folder/sub``."""
    rng = np.random.default_rng(count)
    target = folder / sub
    target.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (30 + index % 7, 41, 3), dtype=np.uint8)).save(target / f"{index:02d}.png")
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    """A tiny transformers CLIPVisionModelWithProjection saved with its CLIPImageProcessor, as a user's teacher."""
    folder = tmp_path_factory.mktemp("clip_teacher")
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION, projection_dim=16)).eval().save_pretrained(folder)
    processor_class = getattr(__import__("transformers"), IMAGE_PROCESSOR_MAPPING_NAMES["clip"]["torchvision"])
    processor_class(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def run_distill(*args) -> dict:
    config = parse_config(DistillConfig, ["--cpu", "--max-steps", "2", "--batch-size", "4", *map(str, args)])
    try:
        return training_function(config)
    finally:
        AcceleratorState._reset_state(True)


# ------------------------------------------------------------------------------------------ 1. unlabelled data

@pytest.mark.parametrize("layout", ["flat", "one class folder", "glob", "txt listing", "list"])
def test_unlabelled_images_of_every_layout_distil_with_a_held_out_part(layout, tmp_path):
    photos(tmp_path / "data", 20, "cats" if layout == "one class folder" else "")
    files = sorted(str(path) for path in (tmp_path / "data").rglob("*.png"))
    (tmp_path / "list.txt").write_text("".join(f"{Path(file).relative_to(tmp_path)}\n" for file in files))
    source = {"flat": str(tmp_path / "data"), "one class folder": str(tmp_path / "data"),
              "glob": str(tmp_path / "data" / "*.png"), "txt listing": str(tmp_path / "list.txt"), "list": files}[layout]
    config = DistillConfig(dataset=source, eval_split="validation", cpu=True)
    train, held_out, subsets = load_datasets(config)
    assert (len(train), len(held_out)) == (18, 2)
    assert set(train["label"]) == set(held_out["label"]) == {-1}
    assert subsets["eval"]["held_out_from"] == {"split": "train", "fraction": 0.1, "seed": 0, "count": 2, "of": 20}


def test_a_hub_dataset_without_labels_distils(monkeypatch, tmp_path):
    """The network boundary replaced: datasets.load_dataset answers with a 'train'-only dataset of images alone."""
    photos(tmp_path, 12)
    images = datasets.Dataset.from_dict({"img": sorted(str(p) for p in tmp_path.iterdir())}).cast_column(
        "img", datasets.Image())
    monkeypatch.setattr(raptor_zoo.data.datasets, "load_dataset", lambda path, split, streaming=False: images)
    monkeypatch.setattr(raptor_zoo.data.datasets, "get_dataset_split_names", lambda path: ["train"])
    train, held_out, subsets = load_datasets(DistillConfig(dataset="org/photos", image_column="img", cpu=True))
    assert (len(train), len(held_out), set(train["label"])) == (11, 1, {-1})


def test_the_recipe_reports_accuracy_only_where_labels_exist(tmp_path):
    result = run_distill("--dataset", photos(tmp_path / "data", 12), "--eval-split", "validation",
                         "--block-schedule", "5", "7", "--output-dir", tmp_path / "out")
    assert result["teacher_accuracy"] is None and result["num_labelled"] == 0
    assert result["mean_cosine"]["all"] > 0 and result["num_images"] == 1


# ------------------------------------------------------------------------------------------ 2. wasteful settings

@dataclasses.dataclass
class RunConfig:
    """The run fields start_run reads."""
    output_dir: str
    cpu: bool = False
    mixed_precision: str = "no"
    seed: int = 0
    num_workers: int = 0


def test_emulated_mixed_precision_falls_back_and_says_what_it_measured(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(raptor_zoo.training, "cpu_autocast_slowdown", lambda precision: 29.0)
    config = RunConfig(str(tmp_path), mixed_precision="bf16", num_workers=64)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # as `accelerate launch --cpu` sets it
    try:
        accelerator, _ = start_run(config, write_config=True)
        assert accelerator.mixed_precision == "no" and accelerator.device.type == "cpu"
    finally:
        AcceleratorState._reset_state(True)
    out = capsys.readouterr().out
    assert config.mixed_precision == "no"
    assert "mixed_precision bf16 on this CPU: a ViT block's forward and backward run 29.0x slower than in fp32" in out
    assert config.num_workers == len(os.sched_getaffinity(0)) and "num_workers 64 exceeds" in out
    saved = (tmp_path / "args.yaml").read_text()
    assert "cpu: true" in saved and "mixed_precision: 'no'" in saved  # what the run used, not what was asked


def test_the_slowdown_is_measured():
    slowdown = raptor_zoo.training.cpu_autocast_slowdown("bf16", repeats=1)
    assert np.isfinite(slowdown) and slowdown > 0


def test_warmup_longer_than_a_stage_is_scaled_and_said(tmp_path, capsys):
    assert (stage_warmup_steps(10_000, 20), stage_warmup_steps(5, 20), stage_warmup_steps(20, 20)) == (2, 5, 2)
    result = run_distill("--max-train-images", "16", "--block-schedule", "5", "7", "--warmup-steps", "10000",
                         "--max-steps", "10", "--schedule", "joint", "--output-dir", tmp_path)
    out = capsys.readouterr().out
    assert "warmup_steps 10000 is not shorter than the 10 steps of joint: warming up over 1 steps" in out
    assert result["training"]["steps"] == 10


# ------------------------------------------------------------------------------------------ 3. another teacher's phases

def test_a_schedule_measured_on_another_teacher_is_not_applied(tmp_path, capsys):
    result = run_distill("--max-train-images", "16", "--block-schedule", "7", "5", "--block-schedule-teacher",
                         "vit_base_patch14_reg4_dinov2", "--phase-images", "16", "--output-dir", tmp_path)
    out = capsys.readouterr().out
    assert "block_schedule [7, 5] was measured on vit_base_patch14_reg4_dinov2, not on digits-vit" in out
    phases = json.loads((tmp_path / "phases.json").read_text())
    assert result["training"]["block_schedule"] == phases["block_schedule"] and phases["k"] == 2
    same = run_distill("--max-train-images", "16", "--block-schedule", "7", "5", "--block-schedule-teacher",
                       "digits-vit", "--output-dir", tmp_path / "same")
    assert same["training"]["block_schedule"] == [7, 5] and not (tmp_path / "same" / "phases.json").exists()


def test_no_shipped_config_applies_the_papers_phases_to_another_teacher():
    distill_configs = [path for path in sorted((REPO / "recipes" / "configs").glob("*.yaml"))
                       if "schedule:" in path.read_text()]  # the distillation recipe's (two_stage / joint)
    assert len(distill_configs) >= 8
    for path in distill_configs:
        config = parse_config(DistillConfig, ["--config", str(path)])
        if config.block_schedule is not None:
            assert config.block_schedule_teacher == config.teacher, path.name


# ------------------------------------------------------------------------------------------ 4. embedding heads

@pytest.fixture(scope="module")
def exact_clip_raptor(clip_folder, tmp_path_factory) -> Path:
    """The Raptor of the CLIP teacher with schedule (1,)*L: the teacher itself, saved."""
    folder = tmp_path_factory.mktemp("clip_raptor")
    raptor_zoo.save_pretrained(raptor_zoo.from_teacher(raptor_zoo.load_teacher(clip_folder), block_schedule=(1,) * 4),
                               folder)
    return folder


def test_an_embedding_head_is_saved_as_an_embedding_model(exact_clip_raptor):
    config = json.loads((exact_clip_raptor / "config.json").read_text())
    assert config["architectures"] == ["RaptorModel"] and config["projection_dim"] == 16
    assert "id2label" not in config and "label_names" not in config and config["num_classes"] == 16
    assert config["last_hidden_state"] == "pre_norm"
    card = (exact_clip_raptor / "README.md").read_text()
    assert "16-d image-embedding projection" in card and "Top-1 accuracy, teacher's head" not in card
    assert "pipeline_tag: image-feature-extraction" in card
    with pytest.raises(ValueError, match="image-embedding projection .* not a classifier"):
        AutoModelForImageClassification.from_pretrained(exact_clip_raptor)


def test_automodel_and_the_pipeline_give_the_teachers_image_embeddings(clip_folder, exact_clip_raptor):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (683 // 16, 1024 // 16, 3), dtype=np.uint8))
    teacher = CLIPVisionModelWithProjection.from_pretrained(clip_folder).eval()
    pixel_values = AutoImageProcessor.from_pretrained(clip_folder)(images=image, return_tensors="pt").pixel_values
    with torch.no_grad():
        want = teacher(pixel_values)
        got = AutoModel.from_pretrained(exact_clip_raptor).eval()(pixel_values)
    assert torch.equal(got.image_embeds, want.image_embeds)
    assert torch.equal(got.last_hidden_state, want.last_hidden_state)  # CLIP's convention: before post_layernorm
    embeds = torch.tensor(pipeline("image-feature-extraction", model=str(exact_clip_raptor))(image))
    assert torch.equal(embeds[0], want.image_embeds[0])


def test_fidelity_of_an_embedding_head_is_the_embedding_cosine_never_an_accuracy(clip_folder):
    teacher = raptor_zoo.load_teacher(clip_folder)
    assert teacher.head_kind == "embedding"
    raptor = raptor_zoo.from_teacher(teacher, block_schedule=(2, 2))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    metrics = evaluate_fidelity(raptor, teacher, [(images, torch.tensor([0, 1, 2]))], progress=False)
    assert metrics["teacher_accuracy"] is None and metrics["agreement"] is None
    assert metrics["head"] == "embedding" and 0 < metrics["embedding_cosine"] <= 1
    config = raptor_zoo.hub.raptor_config(raptor)
    with pytest.raises(ValueError, match="no accuracy"):
        cards.render_model_card(config, model_name="x", metrics={
            "dataset_name": "d", "dataset_type": "d", "teacher_accuracy": 0.0, "raptor_accuracy": 0.0})


# ------------------------------------------------------------------------------------------ 5. the teacher's processor

# model type -> the vision config of a tiny transformers model of it
FAMILIES = {
    "dinov2": "dinov2", "dinov3_vit": "dinov3_vit", "vit": "vit", "deit": "deit", "beit": "beit",
    "data2vec-vision": "data2vec-vision", "vit_mae": "vit_mae", "vit_msn": "vit_msn", "ijepa": "ijepa",
    "clip": "clip_vision_model", "siglip": "siglip_vision_model", "aimv2": "aimv2_vision_model",
}


@pytest.mark.parametrize("model_type", FAMILIES)
def test_the_teachers_own_processor_prepares_non_square_images_pixel_for_pixel(model_type, tmp_path):
    config = AutoConfig.for_model(FAMILIES[model_type], **{k: v for k, v in VISION.items() if k != "image_size"},
                                  image_size=32)
    AutoModel.from_config(config).eval().save_pretrained(tmp_path)
    processor_class = getattr(__import__("transformers"), IMAGE_PROCESSOR_MAPPING_NAMES[model_type]["torchvision"])
    default = processor_class()
    crops = getattr(default, "do_center_crop", False) and getattr(default, "crop_size", None)
    processor = processor_class(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}) if crops \
        else processor_class(size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path)
    teacher = raptor_zoo.load_teacher(tmp_path)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (43, 64, 3), dtype=np.uint8))
    want = AutoImageProcessor.from_pretrained(tmp_path)(images=image, return_tensors="pt").pixel_values[0]
    got = teacher.eval_transform(image)
    assert got.shape == (3, 32, 32) and torch.equal(got, want)


# ------------------------------------------------------------------------------------------ 6. smaller

def test_phase_images_beyond_the_data_are_said(tmp_path, capsys):
    run_distill("--dataset", photos(tmp_path / "data", 12), "--eval-split", "validation", "--phase-images", "512",
                "--output-dir", tmp_path / "out")
    assert "Phase discovery on all 11 training images (--phase-images 512 asked for more)" in capsys.readouterr().out


def test_local_folders_are_named_by_name_in_progress_and_tables(clip_folder, exact_clip_raptor):
    from raptor_zoo.downstream import load_backbone

    assert load_backbone(str(exact_clip_raptor), kind="raptor").label == exact_clip_raptor.name
    assert load_backbone(str(clip_folder), kind="teacher").label == f"clip_vision_model ({clip_folder.name})"


# ------------------------------------------------------------------------------------------ 7. the path, end to end

@pytest.mark.slow
def test_distil_your_transformers_teacher_on_your_unlabelled_photos(clip_folder, tmp_path):
    """The issue's acceptance command: the shipped CLIP config, a user's teacher folder and a flat folder of 24
    photos, nothing else; then the Raptor through AutoModel and the pipeline."""
    photos(tmp_path / "photos", 24)
    accelerate_config = tmp_path / "accelerate.yaml"
    from accelerate.utils import write_basic_config
    write_basic_config(mixed_precision="no", save_location=str(accelerate_config))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = ["accelerate", "launch", "--config_file", str(accelerate_config), "--cpu",
               str(REPO / "recipes" / "distill.py"), "--config",
               str(REPO / "recipes" / "configs" / "hf_clip_vit_base_patch16_k2.yaml"), "--teacher", str(clip_folder),
               "--dataset", str(tmp_path / "photos"), "--max-steps", "4", "--output-dir", str(tmp_path / "out")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "Warning" not in output, [line for line in output.splitlines() if "Warning" in line]
    phases = json.loads((tmp_path / "out" / "phases.json").read_text())
    assert sum(phases["block_schedule"]) == 4 and len(phases["block_schedule"]) == 2  # this teacher's own phases
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["RaptorModel"] and config["projection_dim"] == 16
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Image-embedding cosine to the teacher's" in card and "Top-1 accuracy, teacher's head" not in card
    image = Image.open(next((tmp_path / "photos").iterdir()))
    embeds = torch.tensor(pipeline("image-feature-extraction", model=str(tmp_path / "out"))(image))
    assert embeds.shape == (1, 16)
    with torch.no_grad():
        direct = AutoModel.from_pretrained(tmp_path / "out")(
            AutoImageProcessor.from_pretrained(clip_folder)(images=image, return_tensors="pt").pixel_values)
    assert torch.allclose(embeds, direct.image_embeds, atol=1e-6)
