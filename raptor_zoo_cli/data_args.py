"""The data fields every recipe's config shares (``--dataset``, the splits, size limits, the subsets' seed), without
torch: the command line reads and checks them before the library is imported. ``raptor_zoo.data`` re-exports
:class:`DataArgs` beside :func:`raptor_zoo.data.load_splits`, which its :meth:`DataArgs.load_splits` calls."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raptor_zoo.data import Splits

__all__ = ["DataArgs"]


@dataclass
class DataArgs:
    """The data fields every recipe's config inherits (``--dataset``, the splits, size limits, the subsets' seed),
    read by :meth:`load_splits`; each recipe adds the fields only it needs (augmentation, streaming, ...)."""
    dataset: str = field(default="digits", metadata={
        "group": "Data", "aliases": ["data"],
        "help": "'digits' (the embedded data), a folder of images (class sub-folders give labels), a .txt file listing "
                "image paths, a glob pattern or a Hub dataset id"})
    train_split: str = field(default="train", metadata={"group": "Data", "help": "split to train on"})
    eval_split: str = field(default="test", metadata={"group": "Data", "help": "held-out split to evaluate on"})
    eval_fraction: float = field(default=0.1, metadata={
        "group": "Data", "help": "data without a held-out split: this seeded random fraction of the training images "
                                 "is held out for evaluation"})
    image_column: str = field(default="image", metadata={"group": "Data", "help": "image column of the dataset"})
    label_column: str = field(default="label", metadata={"group": "Data", "help": "label column of the dataset"})
    max_train_images: int | None = field(default=None, metadata={
        "group": "Data", "help": "a seeded random subset of N training images, stratified by label; none = all"})
    max_eval_images: int | None = field(default=None, metadata={
        "group": "Data", "help": "a seeded random subset of N held-out images, stratified by label; none = all"})
    subset_seed: int = field(default=0, metadata={
        "group": "Data", "help": "seed of the random subsets the run takes (size limits, a held-out part split off)"})
    num_workers: int = field(default=0, metadata={"group": "Data", "help": "DataLoader worker processes"})

    def __post_init__(self) -> None:
        for name in ("max_train_images", "max_eval_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1 or none (all images), got {value}.")
        if self.num_workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {self.num_workers}.")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"--eval-fraction must lie strictly between 0 and 1, got {self.eval_fraction}.")

    def load_splits(self, **options: Any) -> Splits:
        """:func:`load_splits` of these fields; ``options`` pass its other arguments (``streaming``, ``labels``,
        ``require_all_classes``) or replace a field's value (a recipe's own held-out limit)."""
        arguments: dict[str, Any] = dict(
            train_split=self.train_split, eval_split=self.eval_split, max_train_images=self.max_train_images,
            max_eval_images=self.max_eval_images, subset_seed=self.subset_seed, image_column=self.image_column,
            label_column=self.label_column, eval_fraction=self.eval_fraction)
        from raptor_zoo.data import load_splits

        return load_splits(self.dataset, **{**arguments, **options})
