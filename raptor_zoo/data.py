"""Image data for raptor_zoo: the embedded digits split, image folders and Hub datasets, timm transforms, loaders.

Every model in raptor_zoo takes **normalised** tensors; this module normalises once, with a timm-style
``data_config`` (``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``), usually
``timm.data.resolve_model_data_config(model)`` or a teacher's ``data_config``.

The embedded data is scikit-learn's digits (1797 real 8x8 images that ship with scikit-learn), upsampled to
32x32 RGB. Its held-out split (:func:`load_digits_split`) is fixed and shared by every recipe, test and
benchmark of the project, so "held-out accuracy" always means the same 360 images.
"""
from __future__ import annotations

import functools
import glob
import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from raptor_zoo_cli.data_args import DataArgs

__all__ = [
    "DIGITS_CLASS_NAMES",
    "load_digits_split",
    "digits_mean_std",
    "load_image_dataset",
    "random_subset",
    "subset_indices",
    "image_files",
    "split_names",
    "class_histogram",
    "check_class_coverage",
    "Splits",
    "dataset_num_classes",
    "load_splits",
    "DataArgs",
    "build_transform",
    "create_loader",
    "ProcessorTransform",
    "TransformedDataset",
    "TransformedIterableDataset",
]

_logger = logging.getLogger(__name__)

DIGITS_CLASS_NAMES = [str(digit) for digit in range(10)]
DIGITS_SPLITS = ("train", "test")


@functools.lru_cache(maxsize=4)
def _digits_pixels(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 [N, image_size, image_size] (bilinear upsampling of 0..255 values) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.from_numpy(digits.images).float().mul_(255.0 / 16.0).unsqueeze(1)
    pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    pixels = pixels.round_().clamp_(0, 255).to(torch.uint8).squeeze(1).numpy()
    return pixels, digits.target.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _digits_split_indices(seed: int, test_fraction: float) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, labels = _digits_pixels(8)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels)
    return {"train": np.sort(train_idx), "test": np.sort(test_idx)}


def load_digits_split(
        split: Literal["train", "test"] = "train",
        seed: int = 0,
        test_fraction: float = 0.2,
        image_size: int = 32,
) -> datasets.Dataset:
    """The project's fixed, stratified split of scikit-learn's digits as a ``datasets.Dataset``.

    Columns: ``image`` (PIL RGB, the 8x8 digit with values scaled to 0..255 and upsampled bilinearly to
    ``image_size``; three equal channels) and ``label`` (``ClassLabel`` with names "0".."9").
    With the defaults: 1437 train and 360 test images, every class in the same proportion in both.
    """
    if split not in DIGITS_SPLITS:
        raise ValueError(f"Unknown digits split {split!r}; expected one of {DIGITS_SPLITS}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}.")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8 (the digits are 8x8), got {image_size!r}.")
    pixels, labels = _digits_pixels(image_size)
    indices = _digits_split_indices(seed, test_fraction)[split]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGITS_CLASS_NAMES)})
    info = datasets.DatasetInfo(
        description=f"scikit-learn digits, {split} split (seed {seed}, test fraction {test_fraction}), "
                    f"upsampled bilinearly to {image_size}x{image_size} RGB.",
        license="BSD-3-Clause",
        features=features,
    )
    return datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(pixels[i]).convert("RGB") for i in indices],
            "label": labels[indices].tolist(),
        },
        info=info,
        split=split,
    )


def digits_mean_std(seed: int = 0, test_fraction: float = 0.2, image_size: int = 32) -> tuple[float, float]:
    """Pixel mean and std (in 0..1, the same for the three channels) of the digits training split."""
    pixels, _ = _digits_pixels(image_size)
    train = pixels[_digits_split_indices(seed, test_fraction)["train"]].astype(np.float64) / 255.0
    return float(train.mean()), float(train.std())


def _looks_like_path(source: str) -> bool:
    """True for strings that can only be a filesystem path (a Hub id is `name` or `org/name`)."""
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or "\\" in source
        or source.endswith("/")
        or source.count("/") > 1
    )


def _is_readable_image(example: dict[str, Any], image_column: str) -> bool:
    """Whether PIL can identify and verify the (undecoded) image of ``example``."""
    image = example[image_column]
    source = image["path"] if image.get("bytes") is None else io.BytesIO(image["bytes"])
    try:
        with Image.open(source) as opened:
            opened.verify()
    except Exception:
        return False
    return True


def _drop_unreadable_images(
        dataset: datasets.Dataset | datasets.IterableDataset,
        image_column: str,
        data_dir: Path | str,
        unreadable: Literal["skip", "raise"],
) -> datasets.Dataset | datasets.IterableDataset:
    """``dataset`` without the images PIL cannot read (see ``load_image_dataset``)."""
    undecoded = dataset.cast_column(image_column, datasets.Image(decode=False))
    if isinstance(dataset, datasets.IterableDataset):
        def check(example: dict[str, Any]) -> bool:
            if _is_readable_image(example, image_column):
                return True
            if unreadable == "raise":
                raise OSError(f"Unreadable image {example[image_column]['path']} in {data_dir}.")
            _logger.warning("Skipping unreadable image %s.", example[image_column]["path"])
            return False
        return undecoded.filter(check).cast_column(image_column, datasets.Image())
    readable = np.array(undecoded.map(
        lambda example: {"_readable": _is_readable_image(example, image_column)},
        desc="Checking images", load_from_cache_file=True,
    )["_readable"], dtype=bool)
    if readable.all():
        return dataset
    bad_paths = [undecoded[int(i)][image_column]["path"] for i in np.flatnonzero(~readable)]
    if unreadable == "raise":
        raise OSError(
            f"{len(bad_paths)} unreadable image(s) in {data_dir}, first: {bad_paths[:5]}. Remove or fix them, "
            f"or pass unreadable='skip' to leave them out.")
    _logger.warning(
        "Skipping %d unreadable image(s) of %d in %s (first: %s).",
        len(bad_paths), len(readable), data_dir, bad_paths[:5])
    return dataset.select(np.flatnonzero(readable))


def image_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path] | None:
    """The image files a list of paths, a ``.txt`` listing or a glob pattern names; None for other sources.

    Raises FileNotFoundError naming the files that do not exist, or a pattern that matches nothing.
    """
    if isinstance(source, (list, tuple)):
        files = [Path(item).expanduser() for item in source]
    elif str(source).endswith(".txt") and Path(source).expanduser().is_file():
        listing = Path(source).expanduser()
        lines = [line.strip() for line in listing.read_text().splitlines()]
        files = [(listing.parent / line).expanduser() for line in lines if line and not line.startswith("#")]
    elif any(char in str(source) for char in "*?["):
        files = sorted(Path(match) for match in glob.glob(os.path.expanduser(str(source)), recursive=True)
                       if Path(match).is_file())
        if not files:
            raise FileNotFoundError(f"The pattern {str(source)!r} matches no image file.")
    else:
        return None
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed image file(s) do not exist, first: {missing[:5]}.")
    if not files:
        raise ValueError(f"{_describe(source)} names no image file.")
    return files


def _describe(source: Any) -> str:
    """A short name of a data source for messages (a list is summarised, not printed)."""
    if isinstance(source, (list, tuple)):
        return f"a list of {len(source)} image files"
    return repr(os.fspath(source))


def split_names(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The splits a source has (``digits``: train and test; image files: train)."""
    if image_files(source) is not None:
        return ["train"]
    source = os.fspath(source)
    if source == "digits":
        return list(DIGITS_SPLITS)
    path = Path(source).expanduser()
    load_args = dict(path="imagefolder", data_dir=str(path)) if path.is_dir() else dict(path=source)
    return list(datasets.get_dataset_split_names(**load_args))


def load_image_dataset(
        source: str | os.PathLike | Sequence[str | os.PathLike],
        split: str = "train",
        streaming: bool = False,
        image_column: str = "image",
        label_column: str = "label",
        unreadable: Literal["skip", "raise"] = "skip",
        labels: bool = True,
) -> datasets.Dataset | datasets.IterableDataset:
    """An image dataset with columns ``image`` and ``label``, from one of these sources.

    ``source`` is
      * ``"digits"``: the embedded digits split (:func:`load_digits_split`, no network);
      * an existing directory: ``datasets.load_dataset("imagefolder", data_dir=source)`` (class = sub-folder; a flat
        folder of photos, or a single sub-folder, has no labels);
      * image files: a list of paths, a ``.txt`` file naming one image per line (relative to the file), or a glob
        pattern such as ``"photos/*.jpg"`` (unlabelled; their only split is ``train``);
      * otherwise a Hub dataset id, through ``datasets.load_dataset(source, split=split, streaming=streaming)``.
    ``image_column`` / ``label_column`` name the source's columns; they are renamed to ``image`` / ``label``.

    Unreadable images in a directory or a list (files PIL cannot identify or verify) are **skipped** by default,
    with a warning giving their count and the first file names (map-style: checked once up front, cached by
    ``datasets``; streaming: checked on the fly, one warning per skipped file). ``unreadable="raise"`` raises
    ``OSError`` naming them instead.

    A held-out ``split`` the source lacks (``validation`` of a train/test folder) falls back, with a warning, to
    its only held-out split; any other missing split raises ValueError naming the splits that exist
    (:func:`load_splits` can split a held-out part off the training split instead).
    ``labels=False`` accepts unlabelled images: a missing label column reads -1.
    """
    if unreadable not in ("skip", "raise"):
        raise ValueError(f"unreadable must be 'skip' or 'raise', got {unreadable!r}.")
    files = image_files(source)
    if files is not None:
        if split != "train":
            _existing_split(_describe(source), split, ["train"])
        if labels:
            raise ValueError(f"{_describe(source)} lists image files without labels; load it with labels=False "
                             "(distillation and phase discovery need none) or use a folder of class sub-folders.")
        dataset = datasets.Dataset.from_dict(
            {"image": [str(file) for file in files], "label": [-1] * len(files)},
            features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
        dataset = _drop_unreadable_images(dataset, "image", _describe(source), unreadable)
        return dataset.to_iterable_dataset() if streaming else dataset
    source = os.fspath(source)
    if source == "digits":
        dataset = load_digits_split(split)
        return dataset.to_iterable_dataset() if streaming else dataset
    path = Path(source).expanduser()
    if path.is_dir():
        load_args: dict[str, Any] = dict(path="imagefolder", data_dir=str(path))
    elif path.exists() or _looks_like_path(source):
        raise FileNotFoundError(
            f"No image directory at {source!r}. Expected 'digits' (the embedded data), an existing directory of "
            f"class sub-folders (loaded as an imagefolder), or a Hub dataset id such as 'org/name'.")
    else:
        load_args = dict(path=source)
    try:
        dataset = datasets.load_dataset(**load_args, split=split, streaming=streaming)
    except ValueError as err:
        if "Unknown split" not in str(err):
            raise
        split = _existing_split(source, split, list(datasets.get_dataset_split_names(**load_args)))
        dataset = datasets.load_dataset(**load_args, split=split, streaming=streaming)
    column_names = dataset.column_names
    if column_names is not None and not labels and label_column not in column_names:
        dataset = dataset.map(lambda example: {label_column: -1})
        column_names = [*column_names, label_column]
    if column_names is not None:
        missing = [name for name in (image_column, label_column) if name not in column_names]
        if missing:
            raise ValueError(
                f"Dataset {source!r} has no column(s) {missing}; its columns are {column_names}. "
                f"Pass image_column= / label_column= naming the right ones.")
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    if path.is_dir():
        dataset = _drop_unreadable_images(dataset, "image", path, unreadable)
    return dataset


def class_histogram(labels: Any) -> dict[str, int]:
    """Images per label, keys sorted by label (as strings, so the record is JSON); ``{}`` for unlabelled data."""
    values, counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
    return {str(value): int(n) for value, n in zip(values, counts) if value >= 0}


def _stratified_indices(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices with every label in proportion (largest remainder, ties broken at random), in random order.

    When ``count`` allows it every class gets at least one image first, then the rest is shared in proportion.
    """
    classes, inverse = np.unique(labels, return_inverse=True)
    sizes = np.bincount(inverse)
    take = np.ones_like(sizes) if count >= len(classes) else np.zeros_like(sizes)
    quotas = take + (count - int(take.sum())) * (sizes - take) / (len(labels) - int(take.sum()))
    take = np.floor(quotas).astype(np.int64)
    remainder = count - int(take.sum())
    if remainder:
        order = np.lexsort((rng.random(len(classes)), -(quotas - take)))
        take[order[:remainder]] += 1
    chosen = [rng.choice(np.flatnonzero(inverse == c), size=int(n), replace=False) for c, n in enumerate(take) if n]
    return rng.permutation(np.concatenate(chosen))


def random_subset(
        dataset: datasets.Dataset | datasets.IterableDataset,
        max_images: int | None,
        seed: int = 0,
        shuffle_buffer_size: int = 10_000,
) -> tuple[datasets.Dataset | datasets.IterableDataset, dict[str, Any]]:
    """At most ``max_images`` images of ``dataset`` as a seeded random subset, and the record of what was taken.

    Map-style datasets with labels are sampled **stratified** (every class in proportion, so the subset of a
    class-sorted image folder holds all classes), unlabelled ones (label -1) uniformly; the subset comes in random
    order. Streaming datasets ``take`` after a seeded shuffle buffer of ``shuffle_buffer_size``. ``max_images=None``
    (or one at least the dataset's size) keeps everything. The record (seed, count, of, method, class_histogram)
    belongs in the run's results, so the subset can be told and rebuilt.
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None (all images), got {max_images}.")
    if isinstance(dataset, datasets.IterableDataset):
        if max_images is None:
            return dataset, {"method": "all", "seed": seed, "count": None, "of": None, "class_histogram": None}
        subset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size).take(max_images)
        return subset, {"method": f"shuffle buffer of {shuffle_buffer_size}, then take", "seed": seed,
                        "count": max_images, "of": None, "class_histogram": None}
    if max_images is None or max_images >= len(dataset):
        labels = _labels(dataset)
        return dataset, {"method": "all", "seed": seed, "count": len(dataset), "of": len(dataset),
                         "class_histogram": class_histogram(labels)}
    indices, record = subset_indices(dataset, max_images, seed)
    return dataset.select(indices.tolist()), record


def _labels(dataset: datasets.Dataset) -> np.ndarray:
    """The label column as int64 (-1 throughout for a dataset without one)."""
    if "label" in dataset.column_names:
        return np.asarray(dataset["label"], dtype=np.int64)
    return np.full(len(dataset), -1, dtype=np.int64)


def subset_indices(dataset: datasets.Dataset, count: int, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Indices of a seeded random subset of ``count`` images of a map-style dataset (stratified by label where
    every image has one), in random order, and its record (see :func:`random_subset`)."""
    labels = _labels(dataset)
    rng = np.random.default_rng(seed)
    labelled = bool((labels >= 0).all())
    indices = _stratified_indices(labels, count, rng) if labelled else rng.permutation(len(labels))[:count]
    return indices, {"method": "stratified by label" if labelled else "uniform", "seed": seed, "count": count,
                     "of": len(labels), "class_histogram": class_histogram(labels[indices])}


def check_class_coverage(record: dict[str, Any], num_classes: int, split: str, option: str) -> None:
    """Refuse a labelled subset (a :func:`random_subset` record) that lacks any of the dataset's ``num_classes``."""
    histogram = record.get("class_histogram")
    if not histogram:
        return
    missing = [label for label in range(num_classes) if histogram.get(str(label), 0) == 0]
    if missing:
        kept = f"{record['count']} of {record['of']} images" if record.get("of") else f"{record['count']} images"
        raise ValueError(
            f"The {split!r} subset ({kept}) has no image of class(es) {missing[:20]} of the dataset's {num_classes}: "
            f"accuracy on it would not be the dataset's. Raise {option} to at least {num_classes} (the subset is "
            "stratified: every class then appears) or drop it to use the whole split.")


@dataclass
class Splits:
    """A recipe's train and held-out datasets, their number of classes and the records of the subsets taken."""
    train: datasets.Dataset | datasets.IterableDataset
    eval: datasets.Dataset | datasets.IterableDataset
    num_classes: int | None
    subsets: dict[str, dict[str, Any]]


def dataset_num_classes(*splits: datasets.Dataset | datasets.IterableDataset) -> int | None:
    """The label feature's class count, else max label + 1 over map-style ``splits``; None for unlabelled data."""
    feature = (splits[0].features or {}).get("label")
    if getattr(feature, "num_classes", None):
        return int(feature.num_classes)
    labels = [np.asarray(split["label"]) for split in splits if isinstance(split, datasets.Dataset)]
    top = max((int(values.max()) for values in labels if len(values)), default=-1)
    return top + 1 if top >= 0 else None


def load_splits(
        source: str | os.PathLike | Sequence[str | os.PathLike],
        train_split: str = "train",
        eval_split: str = "test",
        max_train_images: int | None = None,
        max_eval_images: int | None = None,
        subset_seed: int = 0,
        image_column: str = "image",
        label_column: str = "label",
        streaming: bool = False,
        labels: bool = True,
        require_all_classes: bool = True,
        eval_fraction: float = 0.1,
) -> Splits:
    """Train and held-out splits of ``source`` (:func:`load_image_dataset`), each limited to a seeded random subset.

    A limit takes :func:`random_subset` (stratified by label), never the first images of a listing sorted by class.
    With ``require_all_classes`` a labelled subset that lacks a class of the dataset is refused
    (:func:`check_class_coverage`), naming the option to raise. ``labels=False`` accepts unlabelled data (labels
    -1). A source without a held-out split (a flat folder of photos, a list of files, a Hub dataset with only
    ``train``) gets one: a seeded random ``eval_fraction`` of the training split (at least one image, stratified
    where labelled), left out of training; the record says so.
    """
    columns = dict(image_column=image_column, label_column=label_column, streaming=streaming, labels=labels)
    train = load_image_dataset(source, split=train_split, **columns)
    available = split_names(source)
    if eval_split in available or (eval_split in HELD_OUT_SPLITS and
                                   sum(name in HELD_OUT_SPLITS for name in available) == 1):
        held_out, split_off = load_image_dataset(source, split=eval_split, **columns), None
    elif streaming:
        raise ValueError(f"{_describe(source)} has no {eval_split!r} split (its splits: {available}); a held-out part "
                         "cannot be split off a stream: name an existing split (--eval-split) or drop --streaming.")
    else:
        train, held_out, split_off = _split_off(train, eval_fraction, subset_seed)
    num_classes = None if streaming else dataset_num_classes(train, held_out)
    train, train_record = random_subset(train, max_train_images, seed=subset_seed)
    held_out, eval_record = random_subset(held_out, max_eval_images, seed=subset_seed)
    if split_off is not None:
        eval_record = dict(eval_record, held_out_from=split_off)
    if require_all_classes and num_classes is not None:
        check_class_coverage(train_record, num_classes, train_split, "--max-train-images")
        check_class_coverage(eval_record, num_classes, eval_split, "--max-eval-images")
    return Splits(train, held_out, num_classes, {"train": train_record, "eval": eval_record})


def _split_off(train: datasets.Dataset, fraction: float, seed: int
               ) -> tuple[datasets.Dataset, datasets.Dataset, dict[str, Any]]:
    """(rest, held-out part, record): a seeded random ``fraction`` of ``train`` (stratified where labelled)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"eval_fraction must lie strictly between 0 and 1, got {fraction}.")
    if len(train) < 2:
        raise ValueError(f"{len(train)} image(s) cannot be split into training and held-out parts; add images.")
    count = min(len(train) - 1, max(1, round(fraction * len(train))))
    indices, _ = subset_indices(train, count, seed)
    chosen = np.zeros(len(train), dtype=bool)
    chosen[indices] = True
    held_out, rest = train.select(indices.tolist()), train.select(np.flatnonzero(~chosen).tolist())
    note = {"split": "train", "fraction": fraction, "seed": seed, "count": count, "of": len(train)}
    _logger.warning("No held-out split: %d of the %d training images (%.0f%%, seed %d) are held out for evaluation.",
                    count, len(train), 100 * fraction, seed)
    return rest, held_out, note


HELD_OUT_SPLITS = ("validation", "valid", "val", "test")
"""Split names that hold held-out images; a missing one falls back to the only one a source has."""


def _existing_split(source: str, split: str, available: list[str]) -> str:
    """``split`` if ``source`` has it, else its only held-out split (with a warning), else a ValueError."""
    held_out = [name for name in available if name in HELD_OUT_SPLITS]
    if split in HELD_OUT_SPLITS and len(held_out) == 1:
        _logger.warning("%s has no %r split; using its held-out split %r (its splits: %s).",
                        source, split, held_out[0], ", ".join(available))
        return held_out[0]
    raise ValueError(f"{source!r} has no split {split!r}; its splits are {available}. Name one of them "
                     "(e.g. --eval-split / --train-split / --split).")


_REQUIRED_DATA_CONFIG_KEYS = ("input_size", "mean", "std")


def build_transform(
        data_config: dict[str, Any],
        is_training: bool,
        *,
        rotation_degrees: float = 0.0,
        translate_px: float = 0.0,
        **aug: Any,
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised float tensor [3, H, W], through ``timm.data.create_transform``.

    ``data_config`` is timm-style (input_size, mean, std, interpolation, crop_pct). For training,
    ``rotation_degrees`` / ``translate_px`` select a light affine augmentation instead of timm's
    (random rotations within +-degrees and shifts within +-px at the model's input size, no flips):
    timm's resize/centre-crop pipeline with a ``RandomAffine`` before ``ToTensor``. Any other keyword
    (hflip, scale, auto_augment, ...) goes to ``create_transform`` and selects timm's own augmentation.
    """
    from timm.data import create_transform
    from timm.data.transforms import MaybeToTensor

    missing = [key for key in _REQUIRED_DATA_CONFIG_KEYS if key not in data_config]
    if missing:
        raise ValueError(
            f"data_config lacks {missing}; expected timm-style keys {list(_REQUIRED_DATA_CONFIG_KEYS)} plus optional "
            f"interpolation and crop_pct (e.g. timm.data.resolve_model_data_config(model)).")
    use_affine = is_training and (rotation_degrees > 0 or translate_px > 0)
    if use_affine and aug:
        raise TypeError(
            f"rotation_degrees/translate_px replace timm's training augmentation; do not combine them with "
            f"create_transform options {sorted(aug)}.")
    transform = create_transform(
        input_size=data_config["input_size"],
        is_training=is_training and not use_affine,
        interpolation=data_config.get("interpolation", "bilinear"),
        mean=data_config["mean"],
        std=data_config["std"],
        crop_pct=data_config.get("crop_pct"),
        crop_mode=data_config.get("crop_mode"),
        **aug,
    )
    if not use_affine:
        return transform
    _, height, width = data_config["input_size"]
    steps = list(transform.transforms)
    to_tensor_index = next(i for i, step in enumerate(steps) if isinstance(step, (MaybeToTensor, transforms.ToTensor)))
    affine = transforms.RandomAffine(
        degrees=rotation_degrees,
        translate=(translate_px / width, translate_px / height),
        interpolation=transforms.InterpolationMode.BILINEAR,
    )
    return transforms.Compose(steps[:to_tensor_index] + [affine] + steps[to_tensor_index:])


class ProcessorTransform:
    """PIL image -> normalised [C, H, W] tensor through a transformers image processor: the teacher's own
    preprocessing, pixel for pixel (resize, crop, rescale, normalise as its pipeline runs them)."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"ProcessorTransform({type(self.processor).__name__})"


class TransformedDataset(torch.utils.data.Dataset):
    """Map-style view of an image/label dataset yielding ``(transform(image), label)``."""

    def __init__(self, dataset: datasets.Dataset, transform: Callable[[Image.Image], torch.Tensor]):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        example = self.dataset[index]
        return self.transform(example["image"].convert("RGB")), int(example["label"])


class TransformedIterableDataset(torch.utils.data.IterableDataset):
    """Streaming view of an image/label ``datasets.IterableDataset`` yielding ``(transform(image), label)``."""

    def __init__(self, dataset: datasets.IterableDataset, transform: Callable[[Image.Image], torch.Tensor]):
        self.dataset = dataset
        self.transform = transform

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        for example in self.dataset:
            yield self.transform(example["image"].convert("RGB")), int(example["label"])


def create_loader(
        dataset: datasets.Dataset | datasets.IterableDataset,
        data_config: dict[str, Any],
        batch_size: int,
        is_training: bool,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool | None = None,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        shuffle_buffer_size: int = 10_000,
) -> DataLoader:
    """A DataLoader yielding ``(images [B, 3, H, W] normalised, labels [B])`` from a map-style or streaming dataset.

    ``transform`` defaults to ``build_transform(data_config, is_training)``. Training loaders shuffle (seeded;
    streaming ones through a buffer of ``shuffle_buffer_size``) and drop the last partial batch unless
    ``drop_last`` says otherwise.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if not isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
        raise TypeError(
            f"create_loader expects a datasets.Dataset or datasets.IterableDataset (see load_image_dataset), "
            f"got {type(dataset).__name__}.")
    transform = transform or build_transform(data_config, is_training)
    drop_last = is_training if drop_last is None else drop_last
    if isinstance(dataset, datasets.IterableDataset):
        if is_training:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        return DataLoader(
            TransformedIterableDataset(dataset, transform),
            batch_size=batch_size,
            num_workers=num_workers,
            drop_last=drop_last,
        )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TransformedDataset(dataset, transform),
        batch_size=batch_size,
        shuffle=is_training,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
