"""Size limits take seeded random subsets, stratified by label: on an image folder sorted by class, every limit of
every recipe (distillation pool, evaluation batches, phase images, probe, fine-tune, analyses) holds every class
in proportion, and the run records what it took.

The fixture folder is sorted by class like MNIST's: the first images of a listing are all one class. Each class is
a distinct grey level, so an image tensor tells its class."""
import importlib.util
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image

from raptor_zoo.data import build_transform, load_image_dataset, load_splits, random_subset
from raptor_zoo.models.digits_vit import DIGITS_MEAN, DIGITS_STD
from raptor_zoo.recipes.distill import DistillConfig, load_datasets, phase_discovery_images
from raptor_zoo.training import parse_config

REPO = Path(__file__).resolve().parent.parent
TRAIN_COUNTS = (30, 30, 6, 6, 6)
TEST_COUNTS = (10, 10, 4, 4, 4)
DATA_CONFIG = {"input_size": (3, 32, 32), "mean": DIGITS_MEAN, "std": DIGITS_STD, "interpolation": "bilinear",
               "crop_pct": 1.0}


def grey_level(label: int) -> int:
    return 20 + 45 * label


@pytest.fixture(scope="module")
def sorted_folder(tmp_path_factory) -> Path:
    """train/ and test/ with class sub-folders 0..4 of solid grey 8x8 images (class c at grey_level(c))."""
    root = tmp_path_factory.mktemp("class_sorted")
    for split, counts in (("train", TRAIN_COUNTS), ("test", TEST_COUNTS)):
        for label, count in enumerate(counts):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for index in range(count):
                Image.new("RGB", (8, 8), (grey_level(label),) * 3).save(folder / f"{index:03d}.png")
    return root


def classes_of(images: torch.Tensor) -> np.ndarray:
    """The class of each normalised image tensor, from its grey level."""
    references = torch.stack([build_transform(DATA_CONFIG, is_training=False)(
        Image.new("RGB", (8, 8), (grey_level(label),) * 3)) for label in range(len(TRAIN_COUNTS))])
    distances = (images[:, None] - references[None]).flatten(2).abs().mean(-1)
    return distances.argmin(dim=1).numpy()


def assert_in_proportion(histogram: dict, counts: tuple, total: int) -> None:
    """Every class present, each within one image of its share of ``total``."""
    assert sorted(histogram) == [str(label) for label in range(len(counts))]
    assert sum(histogram.values()) == total
    for label, count in enumerate(counts):
        assert abs(histogram[str(label)] - total * count / sum(counts)) <= 1.0 + 1e-9, histogram


def paths(dataset) -> list[str]:
    return [image["path"] for image in dataset.cast_column("image", datasets.Image(decode=False))["image"]]


def test_the_fixture_is_sorted_by_class(sorted_folder):
    """What the old first-N limit saw: the first 40 training images are classes 0 and 1 only."""
    labels = load_image_dataset(sorted_folder, split="train")["label"]
    assert set(labels[:40]) == {0, 1}


def test_random_subset_is_stratified_seeded_and_recorded(sorted_folder):
    dataset = load_image_dataset(sorted_folder, split="train")
    subset, record = random_subset(dataset, 26, seed=3)
    assert record["method"] == "stratified by label" and (record["seed"], record["count"], record["of"]) == (3, 26, 78)
    assert_in_proportion(record["class_histogram"], TRAIN_COUNTS, 26)
    assert np.bincount(subset["label"]).tolist() == [record["class_histogram"][str(c)] for c in range(5)]
    assert list(subset["label"]) != sorted(subset["label"])  # random order: any first n of it is random too
    assert paths(random_subset(dataset, 26, seed=3)[0]) == paths(subset)
    assert sorted(paths(random_subset(dataset, 26, seed=4)[0])) != sorted(paths(subset))
    everything, record = random_subset(dataset, None)
    assert everything is dataset and record["method"] == "all" and record["count"] == 78


def test_a_limit_below_the_class_count_still_covers_every_class_it_can(sorted_folder):
    dataset = load_image_dataset(sorted_folder, split="train")
    _, record = random_subset(dataset, 5, seed=0)
    assert record["class_histogram"] == {str(label): 1 for label in range(5)}


def test_unlabelled_and_streaming_subsets(sorted_folder, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for index in range(12):
        Image.new("RGB", (8, 8), (index * 20,) * 3).save(flat / f"{index:02d}.png")
    photos = load_image_dataset(flat, labels=False)
    subset, record = random_subset(photos, 5, seed=0)
    assert record["method"] == "uniform" and len(subset) == 5 and record["class_histogram"] == {}
    stream = load_image_dataset(sorted_folder, split="train", streaming=True)
    subset, record = random_subset(stream, 10, seed=0)
    labels = [example["label"] for example in subset]
    assert len(labels) == 10 and record["method"].startswith("shuffle buffer")
    assert len(set(labels)) > 2  # a shuffle buffer over the whole (small) split, not the first ten


def test_distillation_pool_eval_batches_and_phase_images_cover_every_class(sorted_folder):
    config = parse_config(DistillConfig, ["--dataset", str(sorted_folder), "--max-train-images", "26",
                                          "--eval-max-batches", "2", "--batch-size", "8", "--cpu"])
    train_set, eval_set, subsets = load_datasets(config, num_processes=1)
    assert_in_proportion(subsets["train"]["class_histogram"], TRAIN_COUNTS, 26)
    assert len(eval_set) == 16  # 2 batches of 8
    assert_in_proportion(subsets["eval"]["class_histogram"], TEST_COUNTS, 16)
    images = phase_discovery_images(train_set, build_transform(DATA_CONFIG, is_training=False), 10, seed=0)
    assert images.shape == (10, 3, 32, 32)
    assert len(set(classes_of(images).tolist())) == 5


def test_distillation_takes_a_held_out_limit_in_images_or_in_batches_not_both(sorted_folder):
    config = parse_config(DistillConfig, ["--dataset", str(sorted_folder), "--max-eval-images", "10", "--cpu"])
    _, eval_set, subsets = load_datasets(config, num_processes=1)
    assert len(eval_set) == 10
    assert_in_proportion(subsets["eval"]["class_histogram"], TEST_COUNTS, 10)
    with pytest.raises(ValueError, match="--eval-max-batches and --max-eval-images both limit the held-out images"):
        parse_config(DistillConfig, ["--max-eval-images", "10", "--eval-max-batches", "2"])


def test_load_splits_refuses_a_subset_missing_classes(sorted_folder):
    splits = load_splits(str(sorted_folder), max_train_images=20, max_eval_images=10)
    assert splits.num_classes == 5
    assert_in_proportion(splits.subsets["train"]["class_histogram"], TRAIN_COUNTS, 20)
    assert_in_proportion(splits.subsets["eval"]["class_histogram"], TEST_COUNTS, 10)
    with pytest.raises(ValueError, match=r"no image of class\(es\) \[2, 3, 4\].*Raise --max-train-images to at least 5"):
        load_splits(str(sorted_folder), max_train_images=2)
    with pytest.raises(ValueError, match="--max-eval-images"):
        load_splits(str(sorted_folder), max_eval_images=3)


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_probe_limits_keep_every_class_and_are_recorded(sorted_folder, tmp_path):
    recipe = load_recipe("linear_probe")
    config = parse_config(recipe.ProbeConfig, [
        "--backbone", "digits-vit", "--dataset", str(sorted_folder), "--max-train-images", "20",
        "--max-eval-images", "10", "--epochs", "2", "--batch-size", "16", "--cpu", "--output-dir", str(tmp_path)])
    try:
        result = recipe.linear_probe_function(config)
    finally:
        AcceleratorState._reset_state(True)
    assert result["backbone"]["num_classes"] == 5  # the old first-N limit trained and scored a 1-class problem
    assert_in_proportion(result["subsets"]["train"]["class_histogram"], TRAIN_COUNTS, 20)
    assert_in_proportion(result["subsets"]["eval"]["class_histogram"], TEST_COUNTS, 10)


def test_finetune_limits_keep_every_class_and_are_recorded(sorted_folder, tmp_path):
    recipe = load_recipe("finetune")
    config = parse_config(recipe.FinetuneConfig, [
        "--model", "raptor-digits-k2", "--dataset", str(sorted_folder), "--max-train-images", "20",
        "--max-eval-images", "10", "--epochs", "1", "--batch-size", "10", "--cpu", "--output-dir", str(tmp_path)])
    try:
        result = recipe.training_function(config)
    finally:
        AcceleratorState._reset_state(True)
    assert_in_proportion(result["training"]["subsets"]["train"]["class_histogram"], TRAIN_COUNTS, 20)
    assert_in_proportion(result["training"]["subsets"]["eval"]["class_histogram"], TEST_COUNTS, 10)


def test_teacher_training_limits_keep_every_class_and_are_recorded(sorted_folder, tmp_path):
    recipe = load_recipe("train_teacher")
    config = parse_config(recipe.TrainTeacherConfig, [
        "--dataset", str(sorted_folder), "--max-train-images", "20", "--max-eval-images", "10", "--epochs", "1",
        "--max-steps", "1", "--batch-size", "10", "--checkpoint-every", "0", "--cpu", "--output-dir", str(tmp_path)])
    try:
        metrics = recipe.training_function(config)
    finally:
        AcceleratorState._reset_state(True)
    assert_in_proportion(metrics["subsets"]["train"]["class_histogram"], TRAIN_COUNTS, 20)
    assert_in_proportion(metrics["subsets"]["eval"]["class_histogram"], TEST_COUNTS, 10)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_classes"] == 5 and saved["label_names"] == ["0", "1", "2", "3", "4"]


def test_phases_cli_reads_a_random_subset(sorted_folder, tmp_path, monkeypatch):
    import raptor_zoo.phases
    from raptor_zoo.cli import main

    seen = []
    real_discover = raptor_zoo.phases.discover

    def recording_discover(teacher, batches, **kwargs):
        batches = list(batches)
        seen.extend(classes_of(torch.cat(batches).cpu()).tolist())
        return real_discover(teacher, batches, **kwargs)

    monkeypatch.setattr(raptor_zoo.phases, "discover", recording_discover)
    assert main(["phases", "--teacher", "digits-vit", "--data", str(sorted_folder / "train"), "--k", "2",
                 "--num-images", "10", "--out", str(tmp_path)]) == 0
    assert len(seen) == 10 and len(set(seen)) >= 3


def test_analysis_and_adaptive_benchmark_images_are_random_subsets(sorted_folder):
    from raptor_zoo.analysis.cli import _load_images
    from raptor_zoo.bench_adaptive import load_eval_images

    images, labels = _load_images(str(sorted_folder), "train", DATA_CONFIG, 10, 4, "cpu")
    assert len(images) == 10 and set(labels.tolist()) == set(range(5))
    images, labels = load_eval_images(str(sorted_folder), "test", DATA_CONFIG, 10)
    assert len(images) == 10 and set(labels.tolist()) == set(range(5))
