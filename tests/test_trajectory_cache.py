"""The teacher-trajectory cache of the distillation recipe: the cached path trains on the same batches with the same
targets as the teacher on the fly (fp32: the same loss; fp16: within its rounding), is rebuilt when the images or the
teacher change, and refuses augmentation."""
import json

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from raptor_zoo.data import TransformedDataset, build_transform, load_digits_split
from raptor_zoo.distill import TrajectoryDistillationTask
from raptor_zoo.distill.trajectory_cache import CachedTrajectories, TrajectoryCache
from raptor_zoo.models.raptor_vit import RaptorVisionTransformer
from raptor_zoo.recipes.distill import DistillConfig, training_function
from raptor_zoo.teachers import load_teacher
from raptor_zoo.training import parse_config


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("digits-vit")


@pytest.fixture(scope="module")
def digits_images(teacher):
    return TransformedDataset(load_digits_split("train").select(range(40)),
                              build_transform(teacher.data_config, is_training=False))


def test_a_cached_trajectory_gives_the_loss_of_the_teacher_on_the_fly(teacher, digits_images):
    student = RaptorVisionTransformer.from_teacher(teacher, block_schedule=(5, 7))
    images = torch.stack([digits_images[i][0] for i in range(8)])
    for stage, phase_index in (("joint", None), ("phase", 1)):
        task = TrajectoryDistillationTask(student, teacher, stage=stage, phase_index=phase_index, max_steps=10)
        on_the_fly = task(images, step=1)
        cached = task(trajectory=teacher.trajectory(images), step=1)
        assert torch.equal(on_the_fly["loss"], cached["loss"]) and on_the_fly["loss"] > 0
    with pytest.raises(ValueError, match="images or its cached teacher trajectory"):
        task(images, trajectory=teacher.trajectory(images))


def test_the_cache_holds_the_teacher_states_and_is_rebuilt_for_other_images(teacher, digits_images, tmp_path):
    identity = {"teacher": teacher.name, "images": "first 40"}
    cache = TrajectoryCache.open_or_build(tmp_path, teacher, digits_images, identity, dtype="fp32", progress=False)
    expected = teacher.trajectory(torch.stack([digits_images[i][0] for i in range(40)]))
    assert len(cache) == 40 and torch.equal(torch.stack([cache[i] for i in range(40)]), expected)
    assert cache.bytes_per_image == 13 * 21 * 128 * 4  # L + 1 states of 21 tokens of 128 floats
    mtime = (tmp_path / "trajectories.npy").stat().st_mtime_ns
    assert TrajectoryCache.open_or_build(tmp_path, teacher, digits_images, identity, dtype="fp32").array.shape[0] == 40
    assert (tmp_path / "trajectories.npy").stat().st_mtime_ns == mtime  # read back, not rebuilt
    half = TrajectoryCache.open_or_build(tmp_path, teacher, digits_images, {**identity, "images": "other"},
                                         progress=False)
    assert half.meta["dtype"] == "fp16" and half.array.dtype == np.float16
    assert torch.allclose(half[3], expected[3], rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="labels for a cache of 40"):
        CachedTrajectories(half, [0] * 39)


def run(tmp_path, name: str, *args: str) -> dict:
    config = parse_config(DistillConfig, [
        "--max-steps", "4", "--phase-max-steps", "2", "--warmup-steps", "1", "--batch-size", "16",
        "--max-train-images", "96", "--eval-max-batches", "2", "--output-dir", str(tmp_path / name), "--cpu", *args])
    try:
        return training_function(config)
    finally:
        AcceleratorState._reset_state(True)


def test_the_recipe_trains_alike_from_the_cache(tmp_path):
    on_the_fly = run(tmp_path, "fly")
    cached = run(tmp_path, "fp32", "--trajectory-cache", str(tmp_path / "cache32"), "--trajectory-cache-dtype", "fp32")
    half = run(tmp_path, "fp16", "--trajectory-cache", str(tmp_path / "cache16"))
    weights = {name: load_file(str(tmp_path / name / "model.safetensors")) for name in ("fly", "fp32", "fp16")}
    for key, value in weights["fly"].items():
        torch.testing.assert_close(weights["fp32"][key], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(weights["fp16"][key], value, rtol=1e-2, atol=1e-3)
    assert cached["mean_cosine"]["all"] == pytest.approx(on_the_fly["mean_cosine"]["all"], abs=1e-5)
    cache = cached["training"]["trajectory_cache"]
    assert (cache["dtype"], cache["num_images"], cache["bytes_per_image"]) == ("fp32", 96, 13 * 21 * 128 * 4)
    assert half["training"]["trajectory_cache"]["bytes_per_image"] == 13 * 21 * 128 * 2
    assert json.loads((tmp_path / "cache32" / "meta.json").read_text())["identity"]["subset"]["count"] == 96
    with pytest.raises(ValueError, match="drop --augment"):
        parse_config(DistillConfig, ["--trajectory-cache", str(tmp_path / "c"), "--augment"])
