"""The teacher's trajectories of a fixed image set, computed once and read back every epoch (docs/design.md §5: "an
optional on-disk trajectory cache (fp16) is allowed for small teachers").

Without augmentation every epoch shows the teacher the same images, so its L + 1 states per image can be computed
once and stored: :class:`TrajectoryCache` writes them to a memory-mapped ``.npy`` file (fp16 by default, fp32 for
exact targets) beside a ``meta.json`` that names what was cached (teacher, input size, data subset), so a cache of
other images or another teacher is rebuilt instead of read. :class:`CachedTrajectories` is the dataset the recipe
then trains on: it yields ``(trajectory, label)`` in the image set's order, so a loader with the same sampler sees
the same batches as the loader of images it replaces, and the distillation task needs no image at all (the student
starts from the teacher's state 0).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

__all__ = ["CACHE_DTYPES", "TrajectoryCache", "CachedTrajectories"]

CACHE_DTYPES = {"fp16": np.float16, "fp32": np.float32}
_ARRAY, _META = "trajectories.npy", "meta.json"


class TrajectoryCache:
    """Teacher trajectories ``[num_images, L + 1, N, D]`` in a memory-mapped file; ``cache[i]`` is image i's, float32."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / _META).read_text())
        self.array = np.load(self.folder / _ARRAY, mmap_mode="r")

    def __len__(self) -> int:
        return self.array.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[index], dtype=np.float32))  # a writable copy

    @property
    def bytes_per_image(self) -> int:
        return int(np.prod(self.array.shape[1:])) * self.array.dtype.itemsize

    @classmethod
    def open_or_build(
            cls,
            folder: str | os.PathLike,
            teacher: Any,
            images: Dataset,
            identity: dict[str, Any],
            dtype: Literal["fp16", "fp32"] = "fp16",
            batch_size: int = 64,
            device: torch.device | str = "cpu",
            progress: bool = True,
    ) -> TrajectoryCache:
        """The cache in ``folder`` if it holds ``identity`` (what the trajectories are of) in ``dtype``, else built:
        ``teacher.trajectory`` over ``images`` (a map-style dataset of ``(normalised image, label)``, in order),
        written to a temporary file and renamed, so a killed build leaves no cache that looks complete."""
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"trajectory cache dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}.")
        folder = Path(folder)
        meta = {"identity": identity, "dtype": dtype, "num_images": len(images)}
        meta_path = folder / _META
        if meta_path.is_file() and (folder / _ARRAY).is_file():
            stored = json.loads(meta_path.read_text())
            if {key: stored.get(key) for key in meta} == json.loads(json.dumps(meta)):
                return cls(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)
        loader = DataLoader(images, batch_size=batch_size, shuffle=False)
        temporary = folder / f".{_ARRAY}.{os.getpid()}.tmp"
        array = None
        start = 0
        with torch.no_grad():
            for batch, _ in tqdm(loader, desc="caching teacher trajectories", disable=not progress):
                states = teacher.trajectory(batch.to(device)).float().cpu().numpy()
                if array is None:
                    array = np.lib.format.open_memmap(temporary, mode="w+", dtype=CACHE_DTYPES[dtype],
                                                      shape=(len(images), *states.shape[1:]))
                array[start:start + len(states)] = states
                start += len(states)
        if array is None:
            raise ValueError("The trajectory cache needs at least one image; the training set is empty.")
        array.flush()
        del array
        os.replace(temporary, folder / _ARRAY)
        meta["shape"] = [len(images), *np.load(folder / _ARRAY, mmap_mode="r").shape[1:]]
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        return cls(folder)


class CachedTrajectories(Dataset):
    """``(trajectory [L + 1, N, D] float32, label)`` per image of a :class:`TrajectoryCache`."""

    def __init__(self, cache: TrajectoryCache, labels: Sequence[int]):
        if len(labels) != len(cache):
            raise ValueError(f"{len(labels)} labels for a cache of {len(cache)} trajectories.")
        self.cache = cache
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.cache[index], int(self.labels[index])
