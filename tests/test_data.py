"""raptor_zoo.data: the digits split, image folders, transforms and loaders (offline, CPU)."""
import logging

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from torchvision import transforms

from raptor_zoo.data import (
    DIGITS_CLASS_NAMES,
    _digits_split_indices,
    build_transform,
    create_loader,
    digits_mean_std,
    load_digits_split,
    load_image_dataset,
)
from raptor_zoo.models.digits_vit import DIGITS_MEAN, DIGITS_STD

DIGITS_DATA_CONFIG = {
    "input_size": (3, 32, 32), "mean": DIGITS_MEAN, "std": DIGITS_STD, "interpolation": "bilinear", "crop_pct": 1.0}


@pytest.fixture(scope="module")
def digits_train():
    return load_digits_split("train")


@pytest.fixture(scope="module")
def digits_test():
    return load_digits_split("test")


@pytest.fixture
def image_folder(tmp_path):
    """Two classes of three small PNGs each, plus one file that only pretends to be a PNG."""
    rng = np.random.default_rng(0)
    for class_name in ("cat", "dog"):
        (tmp_path / class_name).mkdir()
        for index in range(3):
            pixels = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / class_name / f"{index}.png")
    (tmp_path / "dog" / "broken.png").write_bytes(b"this is not a png")
    return tmp_path


def test_digits_split_sizes_disjoint_and_complete(digits_train, digits_test):
    assert (len(digits_train), len(digits_test)) == (1437, 360)
    indices = _digits_split_indices(0, 0.2)
    assert not set(indices["train"]) & set(indices["test"])
    assert sorted(np.concatenate([indices["train"], indices["test"]])) == list(range(1797))


def test_digits_split_is_stratified(digits_train, digits_test):
    train_counts = np.bincount(digits_train["label"], minlength=10)
    test_counts = np.bincount(digits_test["label"], minlength=10)
    all_counts = train_counts + test_counts
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1), test_counts


def test_digits_split_is_deterministic_and_seeded(digits_test):
    again = load_digits_split("test")
    assert again["label"] == digits_test["label"]
    pairs = zip(again["image"][:20], digits_test["image"][:20])
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
    assert not np.array_equal(_digits_split_indices(1, 0.2)["test"], _digits_split_indices(0, 0.2)["test"])


def test_digits_images_are_upsampled_rgb_digits(digits_train):
    assert digits_train.features["label"].names == DIGITS_CLASS_NAMES
    image = digits_train[0]["image"]
    assert image.mode == "RGB" and image.size == (32, 32)
    pixels = np.asarray(image)
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])
    # pooled back to 8x8, the image is the sklearn digit scaled to 0..255
    original = load_digits().images[_digits_split_indices(0, 0.2)["train"][0]] * 255 / 16
    pooled = F.avg_pool2d(torch.tensor(pixels[..., 0], dtype=torch.float32)[None, None], 4)[0, 0].numpy()
    assert np.corrcoef(pooled.ravel(), original.ravel())[0, 1] > 0.95
    assert pixels.min() == 0 and pixels.max() > 200
    assert load_digits_split("test", image_size=16)[0]["image"].size == (16, 16)


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="validation"):
        load_digits_split("validation")
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_split("train", test_fraction=1.5)


def test_digits_mean_std_match_the_teacher_cfg():
    mean, std = digits_mean_std()
    assert mean == pytest.approx(DIGITS_MEAN[0], abs=1e-4)
    assert std == pytest.approx(DIGITS_STD[0], abs=1e-4)


def test_load_image_dataset_digits_map_and_streaming(digits_test):
    assert load_image_dataset("digits", split="test")["label"] == digits_test["label"]
    streamed = load_image_dataset("digits", split="test", streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert [example["label"] for example in streamed.take(10)] == digits_test["label"][:10]


def test_image_folder_skips_unreadable_files(image_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="raptor_zoo.data"):
        dataset = load_image_dataset(image_folder)
    assert len(dataset) == 6
    assert dataset.features["label"].names == ["cat", "dog"]
    assert sorted(dataset["label"]) == [0, 0, 0, 1, 1, 1]
    assert all(image.size == (12, 10) for image in dataset["image"])
    assert "Skipping 1 unreadable image" in caplog.text and "broken.png" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="raptor_zoo.data"):
        assert sum(1 for _ in load_image_dataset(image_folder, streaming=True)) == 6
    assert "broken.png" in caplog.text


def test_image_folder_raise_names_the_unreadable_file_when_streaming(image_folder):
    with pytest.raises(OSError, match="broken.png"):
        list(load_image_dataset(image_folder, streaming=True, unreadable="raise"))


def test_image_folder_raise_names_the_unreadable_file(image_folder):
    with pytest.raises(OSError, match="broken.png"):
        load_image_dataset(image_folder, unreadable="raise")


def test_image_folder_missing_column_is_named(image_folder):
    with pytest.raises(ValueError, match=r"no column\(s\) \['img'\]"):
        load_image_dataset(image_folder, image_column="img")


@pytest.mark.parametrize("source", ["./no_such_folder", "/no/such/folder", "a/b/c", "~/no_such_folder_raptor"])
def test_missing_directory_is_a_clear_error(source):
    with pytest.raises(FileNotFoundError, match="imagefolder") as error:
        load_image_dataset(source)
    assert source in str(error.value)


def test_eval_transform_normalises_with_data_config(digits_train):
    transform = build_transform(DIGITS_DATA_CONFIG, is_training=False)
    constant = Image.new("RGB", (32, 32), (51, 51, 51))
    output = transform(constant)
    assert output.shape == (3, 32, 32) and output.dtype == torch.float32
    expected = (51 / 255 - DIGITS_MEAN[0]) / DIGITS_STD[0]
    assert torch.allclose(output, torch.full_like(output, expected), atol=1e-5)
    # the measured mean/std make the training split zero-mean, unit-variance
    batch = torch.stack([transform(image) for image in digits_train["image"][:500]])
    assert abs(batch.mean().item()) < 0.05 and abs(batch.std().item() - 1) < 0.05


def test_digits_training_transform_is_a_light_affine_without_flips():
    transform = build_transform(DIGITS_DATA_CONFIG, is_training=True, rotation_degrees=10, translate_px=2.5)
    steps = transform.transforms
    affine = next(step for step in steps if isinstance(step, transforms.RandomAffine))
    assert affine.degrees == [-10.0, 10.0] and affine.translate == (2.5 / 32, 2.5 / 32)
    assert not any(isinstance(step, (transforms.RandomHorizontalFlip, transforms.RandomResizedCrop)) for step in steps)
    image = Image.fromarray(np.pad(np.full((8, 8, 3), 255, np.uint8), ((12, 12), (12, 12), (0, 0))))
    torch.manual_seed(0)
    outputs = torch.stack([transform(image) for _ in range(8)])
    assert outputs.shape == (8, 3, 32, 32)
    assert not torch.allclose(outputs[0], outputs[1])  # random
    # bright mass stays roughly where it was: shifts of at most 2-3 px
    centres = [(o[0] > 0).nonzero().float().mean(0) for o in outputs]
    assert all(torch.all((centre - 15.5).abs() <= 3.0) for centre in centres)


def test_build_transform_errors_and_timm_training_default():
    with pytest.raises(ValueError, match="mean"):
        build_transform({"input_size": (3, 32, 32), "std": DIGITS_STD}, is_training=False)
    with pytest.raises(TypeError, match="hflip"):
        build_transform(DIGITS_DATA_CONFIG, is_training=True, rotation_degrees=10, hflip=0.5)
    timm_train = build_transform(DIGITS_DATA_CONFIG, is_training=True)
    assert any(isinstance(step, transforms.RandomHorizontalFlip) for step in timm_train.transforms)


def test_create_loader_map_style_batches(digits_train, digits_test):
    train_loader = create_loader(digits_train, DIGITS_DATA_CONFIG, batch_size=64, is_training=True, seed=0)
    eval_loader = create_loader(digits_test, DIGITS_DATA_CONFIG, batch_size=64, is_training=False)
    assert len(train_loader) == 1437 // 64 and len(eval_loader) == 6
    images, labels = next(iter(train_loader))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.int64
    first_labels = lambda seed: next(iter(create_loader(  # noqa: E731
        digits_train, DIGITS_DATA_CONFIG, batch_size=64, is_training=True, seed=seed)))[1]
    assert torch.equal(first_labels(0), labels) and not torch.equal(first_labels(1), labels)
    assert torch.equal(torch.cat([batch[1] for batch in eval_loader]), torch.tensor(digits_test["label"]))


def test_create_loader_streaming_batches(digits_test):
    streamed = load_image_dataset("digits", split="test", streaming=True)
    loader = create_loader(streamed, DIGITS_DATA_CONFIG, batch_size=100, is_training=False)
    sizes = [images.shape for images, _ in loader]
    assert sizes == [(100, 3, 32, 32)] * 3 + [(60, 3, 32, 32)]
    shuffled = create_loader(streamed, DIGITS_DATA_CONFIG, batch_size=100, is_training=True, seed=0)
    labels = torch.cat([labels for _, labels in shuffled])
    assert len(labels) == 300  # partial batch dropped when training
    assert not torch.equal(labels, torch.tensor(digits_test["label"][:300]))


def test_create_loader_rejects_other_inputs():
    with pytest.raises(TypeError, match="load_image_dataset"):
        create_loader([torch.zeros(3, 32, 32)], DIGITS_DATA_CONFIG, batch_size=4, is_training=False)


def _write_pngs(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)).save(folder / name)


def test_missing_held_out_split_falls_back_to_the_one_that_exists(tmp_path, caplog):
    """A train/test folder asked for 'validation' (the ViT-S config's eval_split) uses 'test' and says so."""
    for split in ("train", "test"):
        _write_pngs(tmp_path / split / "cat", ["0.png", "1.png"])
        _write_pngs(tmp_path / split / "dog", ["0.png"])
    with caplog.at_level(logging.WARNING, logger="raptor_zoo.data"):
        dataset = load_image_dataset(tmp_path, split="validation")
    assert len(dataset) == 3 and "using its held-out split 'test'" in caplog.text
    with pytest.raises(ValueError, match=r"no split 'extra'; its splits are \['train', 'test'\]"):
        load_image_dataset(tmp_path, split="extra")


def test_flat_folder_of_unlabelled_photos(tmp_path):
    _write_pngs(tmp_path, ["a.png", "b.png", "c.png"])
    dataset = load_image_dataset(tmp_path, labels=False)
    assert len(dataset) == 3 and dataset["label"] == [-1, -1, -1]
    with pytest.raises(ValueError, match="no column"):  # a classification dataset needs its labels
        load_image_dataset(tmp_path)
