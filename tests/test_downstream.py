"""Downstream use: the linear-probe features, layer-wise LR decay over a block schedule, freezing, dense features
(timm features_only / forward_intermediates / transformers AutoBackbone), and recipes/linear_probe.py and
recipes/finetune.py launched with `accelerate launch` on CPU plus an in-process finetune resume.

The Raptor is the k=2 Raptor of the embedded digits teacher (block_schedule (5, 7), initialised from the teacher;
32 px images), so everything runs offline in seconds."""
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import timm
import torch
from accelerate.state import AcceleratorState
from accelerate.utils import write_basic_config
from safetensors.torch import load_file
from timm.optim import param_groups_layer_decay
from timm.scheduler import create_scheduler_v2
from transformers import AutoBackbone, AutoConfig

import raptor_zoo
from raptor_zoo.downstream import (
    SeededTransformDataset,
    create_finetune_optimizer,
    freeze_for_finetuning,
    layer_decay_param_groups,
    load_backbone,
    probe_features,
    raptor_layer_ids,
    topk_accuracy,
    train_linear_probe,
)
from raptor_zoo.models.modeling_raptor import RaptorBackbone
from raptor_zoo.models.raptor_vit import RaptorVisionTransformer

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "recipes" / "linear_probe.py"
FINETUNE = REPO / "recipes" / "finetune.py"


def tiny_raptor(block_schedule=(2, 3, 1), **kwargs) -> RaptorVisionTransformer:
    args = dict(img_size=32, patch_size=8, embed_dim=32, num_heads=2, reg_tokens=2, num_classes=5)
    return RaptorVisionTransformer(block_schedule=block_schedule, **{**args, **kwargs})


@pytest.fixture(scope="module")
def raptor_folder(tmp_path_factory):
    """A k=2 Raptor of the embedded digits teacher, saved as a Hub folder."""
    folder = tmp_path_factory.mktemp("raptor-digits-k2")
    model = RaptorVisionTransformer.from_teacher("digits-vit", block_schedule=(5, 7))
    raptor_zoo.save_pretrained(model, folder)
    return folder


@pytest.fixture(scope="module")
def accelerate_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("accelerate") / "default_config.yml"
    write_basic_config(mixed_precision="no", save_location=str(path))
    return path


def launch(accelerate_config, recipe, args, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", "1")
    command = ["accelerate", "launch", "--config_file", str(accelerate_config), "--num_processes", "1", str(recipe),
               "--cpu", *map(str, args)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-6000:]
        pytest.fail(f"{recipe.name} failed with exit code {result.returncode}:\n{output}")
    return result.stdout + result.stderr


def load_recipe(path: Path):
    spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ probe features

def test_probe_features_are_cls_and_patch_mean_of_the_normed_last_state():
    torch.manual_seed(0)
    model = tiny_raptor().eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = probe_features(model, images)
        state = model.forward_steps(model._embed(images), 0, model.depth)
        normed = model.norm(state)
        expected = torch.cat([normed[:, 0], normed[:, model.num_prefix_tokens:].mean(1)], dim=-1)
        # the registers (tokens 1..2) are left out of the mean; the final norm is applied before pooling
        assert model.num_prefix_tokens == 3 and features.shape == (3, 64)
        torch.testing.assert_close(features, expected)
        assert not torch.allclose(features[:, 32:], state[:, 3:].mean(1))
        # the same as the cls_avg pool's pre-logits
        model.reset_classifier(5, "cls_avg")
        torch.testing.assert_close(model.forward_head(model.forward_features(images), pre_logits=True), features)


def test_backbone_kinds_and_teacher_probe_features(raptor_folder):
    raptor = load_backbone(raptor_folder)
    teacher = load_backbone("digits-vit")
    assert (raptor.kind, raptor.teacher, teacher.kind) == ("raptor", "digits-vit", "teacher")
    assert raptor.data_config["input_size"] == teacher.data_config["input_size"] == (3, 32, 32)
    assert not any(p.requires_grad for p in raptor.model.parameters())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = teacher.model.norm(teacher.model.blocks(teacher.model._pos_embed(teacher.model.patch_embed(images))))
        expected = torch.cat([tokens[:, 0], tokens[:, teacher.model.num_prefix_tokens:].mean(1)], -1)
        torch.testing.assert_close(probe_features(teacher.model, images), expected)
    with pytest.raises(ValueError, match="kind must be"):
        load_backbone("digits-vit", kind="vit")


def test_linear_probe_separates_features_and_topk():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    features = torch.randn(60, 8, generator=generator) * 0.3 + torch.nn.functional.one_hot(labels, 8).float() * 2
    probe = train_linear_probe(features, labels, epochs=30, lr=0.05, batch_size=16, progress=False)
    with torch.no_grad():
        assert topk_accuracy(probe(features), labels, ks=(1,))["top1"] == 1.0
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    assert topk_accuracy(logits, torch.tensor([2, 0]), ks=(1, 2, 5)) == {"top1": 0.5, "top2": 1.0, "top5": 1.0}
    with pytest.raises(ValueError, match="labels"):
        train_linear_probe(features, labels[:10])


# ------------------------------------------------------------------------------------------ layer decay, freezing

def per_parameter_lr_scale(model, groups):
    return {name: group["lr_scale"] for group in groups for name in group["param_names"]}


def test_layer_decay_of_a_schedule_of_ones_is_timms_for_a_vit():
    model = tiny_raptor(block_schedule=(1, 1, 1, 1))
    ours = per_parameter_lr_scale(model, layer_decay_param_groups(model, 0.05, 0.7))
    # timm's own grouping (group_matcher) of the same ViT: one unique block per layer
    timm_groups = param_groups_layer_decay(model, 0.05, layer_decay=0.7)
    by_param = {id(p): group["lr_scale"] for group in timm_groups for p in group["params"]}
    theirs = {name: by_param[id(p)] for name, p in model.named_parameters()}
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name]), name


def test_shared_block_lr_scale_follows_its_first_application():
    model = tiny_raptor(block_schedule=(2, 3, 1))  # steps: block 0 at 0-1, block 1 at 2-4, block 2 at 5; L = 6
    layer_ids = raptor_layer_ids(model)
    assert layer_ids["blocks.0.attn.qkv.weight"] == 1
    assert layer_ids["blocks.1.mlp.fc1.weight"] == 3 and layer_ids["blocks.1.depth_scale.fc1.weight"] == 3
    assert layer_ids["blocks.2.norm1.weight"] == 6
    assert layer_ids["patch_embed.proj.weight"] == layer_ids["reg_token"] == 0
    assert (layer_ids["norm.weight"], layer_ids["head.weight"]) == (6, 7)

    decay, lr = 0.5, 1e-2
    optimizer = create_finetune_optimizer(model, "adamw", lr=lr, weight_decay=0.05, layer_decay=decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=10, updates_per_epoch=10,
                                       step_on_epochs=False)
    scheduler.step_update(0)
    names = {id(p): name for name, p in model.named_parameters()}
    lr_of = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
    wd_of = {names[id(p)]: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert set(lr_of) == set(names.values())  # every parameter is optimised, each once
    expected = {"patch_embed.proj.weight": decay ** 7, "blocks.0.attn.qkv.weight": decay ** 6,
                "blocks.1.mlp.fc1.weight": decay ** 4, "blocks.2.mlp.fc2.weight": decay,
                "norm.weight": decay, "head.weight": 1.0}
    for name, scale in expected.items():
        assert lr_of[name] == pytest.approx(lr * scale), name
    assert wd_of["blocks.1.mlp.fc1.weight"] == 0.05 and wd_of["blocks.1.mlp.fc1.bias"] == 0.0
    assert wd_of["pos_embed"] == 0.0  # no_weight_decay()
    with pytest.raises(ValueError, match="layer_decay"):
        create_finetune_optimizer(model, layer_decay=1.5)


def test_freezing_unique_blocks_and_head_only():
    model = tiny_raptor(block_schedule=(2, 3, 1))
    trainable = freeze_for_finetuning(model, freeze_blocks=2)
    assert not any(name.startswith(("blocks.0.", "blocks.1.", "patch_embed", "pos_embed")) for name in trainable)
    assert any(name.startswith("blocks.2.") for name in trainable) and "head.weight" in trainable
    assert freeze_for_finetuning(tiny_raptor(), train_head_only=True) == ["head.weight", "head.bias"]
    with pytest.raises(ValueError, match="--freeze-blocks 4 exceeds .* 3 \\(unique\\) blocks"):
        freeze_for_finetuning(tiny_raptor(), freeze_blocks=4)


def test_seeded_augmentation_is_a_function_of_seed_epoch_and_index():
    from raptor_zoo.data import build_transform, load_digits_split

    digits = load_digits_split("train").select(range(4))
    transform = build_transform({"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}, is_training=True,
                                scale=(0.3, 1.0), hflip=0.5)
    views = SeededTransformDataset(digits, transform, seed=0)
    first = views[2][0]
    torch.manual_seed(123)  # the global RNG stream does not matter
    assert torch.equal(views[2][0], first) and views[2][1] == digits[2]["label"]
    views.set_epoch(1)
    assert not torch.equal(views[2][0], first)


# ------------------------------------------------------------------------------------------ dense features

def test_multi_level_feature_maps_timm_and_transformers(raptor_folder):
    images = torch.randn(2, 3, 32, 32)
    raptor = raptor_zoo.from_pretrained(raptor_folder)
    features = timm.create_model(f"local-dir:{raptor_folder}", pretrained=True, features_only=True,
                                 out_indices=(4, 11)).eval()
    assert features.feature_info.channels() == [128, 128] and features.feature_info.reduction() == [8, 8]
    # transformers' AutoBackbone.from_pretrained only takes Hub repo ids (local folders go to its timm path), so a
    # folder goes through AutoConfig + from_config, or RaptorBackbone.from_pretrained directly
    config = AutoConfig.from_pretrained(raptor_folder, out_indices=[5, 12])
    assert type(AutoBackbone.from_config(config)) is RaptorBackbone
    backbone = RaptorBackbone.from_pretrained(raptor_folder, out_indices=[5, 12]).eval()
    with torch.no_grad():
        maps = features(images)
        reference = raptor.forward_intermediates(images, indices=[4, 11], intermediates_only=True)
        assert [m.shape for m in maps] == [(2, 128, 4, 4)] * 2
        for feature_map, expected in zip(maps, reference):
            torch.testing.assert_close(feature_map, expected)
        hf_maps = backbone(pixel_values=images).feature_maps
        normed = raptor.forward_intermediates(images, indices=[4, 11], norm=True, intermediates_only=True)
        assert backbone.out_features == ["stage5", "stage12"]
        for feature_map, expected in zip(hf_maps, normed):
            torch.testing.assert_close(feature_map, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ recipes

TINY_PROBE = ["--max-train-images", "40", "--max-eval-images", "24", "--batch-size", "16", "--epochs", "3"]


def test_linear_probe_recipe_compare_through_accelerate_launch(accelerate_config, raptor_folder, tmp_path):
    output = launch(accelerate_config, PROBE,
                    ["--backbone", raptor_folder, "--compare", "--output-dir", tmp_path, *TINY_PROBE])
    result = json.loads((tmp_path / "linear_probe.json").read_text())
    assert result["teacher"]["backbone"] == "digits-vit" and result["raptor"]["kind"] == "raptor"
    for role in ("raptor", "teacher"):
        entry = result[role]
        assert 0.0 <= entry["top1"] <= entry["top5"] <= 1.0
        assert (entry["num_train_images"], entry["num_eval_images"], entry["num_features"]) == (40, 24, 256)
    assert result["teacher"]["top1"] > 0.3  # the trained digits teacher, far above chance (0.1) even on 40 images
    assert result["recovery"]["top1"] == pytest.approx(result["raptor"]["top1"] / result["teacher"]["top1"])
    assert "recovery" in output and "Raptor / teacher" in output


def test_linear_probe_feature_cache_and_bad_input(raptor_folder, tmp_path):
    recipe = load_recipe(PROBE)

    def run(args):
        config = recipe.parse_config(recipe.ProbeConfig, ["--cpu", *TINY_PROBE, *map(str, args)])
        try:
            return recipe.linear_probe_function(config)
        finally:
            AcceleratorState._reset_state(True)

    cache = tmp_path / "cache"
    first = run(["--backbone", "digits-vit", "--cache-dir", cache, "--output-dir", tmp_path / "a"])
    files = sorted(path.name for path in cache.iterdir())
    # one file per backbone, data, split, size and subset (40 train / 24 test images, subset seed 0)
    assert files == ["digits-vit__digits__test__32x32__n24-seed0.safetensors",
                     "digits-vit__digits__train__32x32__n40-seed0.safetensors"]
    assert load_file(str(cache / files[1]))["features"].shape == (40, 256)
    assert run(["--backbone", "digits-vit", "--cache-dir", cache, "--output-dir", tmp_path / "b"])["backbone"] \
        == first["backbone"]
    with pytest.raises(ValueError, match="--compare probes a Raptor"):
        run(["--backbone", "digits-vit", "--compare", "--output-dir", tmp_path / "c"])
    with pytest.raises(FileNotFoundError, match="No image directory"):
        run(["--dataset", "./no/such/folder/", "--output-dir", tmp_path / "d"])


def test_linear_probe_compare_probes_teacher_and_raptor_at_one_size(raptor_folder, tmp_path):
    """A DINOv2 teacher defaults to 224, its Raptor was distilled at 56: --compare probes both at 56, or at --img-size."""
    import timm

    from raptor_zoo.teachers import load_teacher

    recipe = load_recipe(PROBE)

    def run(args):
        config = recipe.parse_config(recipe.ProbeConfig, ["--cpu", *TINY_PROBE, *map(str, args)])
        try:
            return recipe.linear_probe_function(config)
        finally:
            AcceleratorState._reset_state(True)

    teacher_folder = tmp_path / "tiny_dinov2"  # the stored 518 px grid of a real DINOv2 checkpoint
    args = dict(embed_dim=32, depth=2, num_heads=2)
    timm.models.save_for_hf(timm.create_model("vit_small_patch14_dinov2", pretrained=False, **args),
                            str(teacher_folder), model_args=args, safe_serialization=True)
    assert load_teacher(str(teacher_folder)).img_size == (224, 224)
    raptor = RaptorVisionTransformer.from_teacher(load_teacher(str(teacher_folder), img_size=56), block_schedule=(1, 1))
    raptor_zoo.save_pretrained(raptor, tmp_path / "raptor")
    compare = ["--backbone", tmp_path / "raptor", "--compare", "--teacher", teacher_folder]
    result = run([*compare, "--output-dir", tmp_path / "a"])
    assert result["raptor"]["input_size"] == result["teacher"]["input_size"] == [3, 56, 56]
    assert result["image_size"] == "56x56"
    result = run([*compare, "--img-size", 70, "--output-dir", tmp_path / "b"])
    assert result["raptor"]["input_size"] == result["teacher"]["input_size"] == [3, 70, 70]
    # the recorded teacher is a local folder, named portably: say to pass --teacher
    with pytest.raises(ValueError, match="pass --teacher"):
        run(["--backbone", tmp_path / "raptor", "--compare", "--output-dir", tmp_path / "c"])
    with pytest.raises(ValueError, match="runs at fixed size 32x32"):
        run(["--backbone", raptor_folder, "--img-size", 40, "--output-dir", tmp_path / "d"])


TINY_FINETUNE = ["--max-train-images", "48", "--max-eval-images", "32", "--batch-size", "16", "--lr", "1e-4",
                 "--layer-decay", "0.75", "--model-ema", "--keep-checkpoints", "5"]


@pytest.mark.slow
def test_finetune_recipe_through_accelerate_launch_saves_a_loadable_raptor(accelerate_config, raptor_folder,
                                                                          tmp_path):
    output = launch(accelerate_config, FINETUNE,
                    ["--model", raptor_folder, "--output-dir", tmp_path, "--epochs", "1", *TINY_FINETUNE])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [entry["epoch"] for entry in metrics["history"]] == [0, 1]
    assert metrics["training"]["steps"] == 3 and "ema_top1" in metrics["final"]
    assert "before fine-tuning" in output and "saved to" in output
    model = raptor_zoo.from_pretrained(tmp_path)
    ema = raptor_zoo.from_pretrained(tmp_path / "ema")
    start = raptor_zoo.from_pretrained(raptor_folder)
    assert model.block_schedule == (5, 7) and model.num_classes == 10
    changed = [name for name, value in model.state_dict().items() if not torch.equal(value, start.state_dict()[name])]
    assert "head.weight" in changed and "blocks.0.attn.qkv.weight" in changed
    assert not torch.equal(ema.state_dict()["head.weight"], model.state_dict()["head.weight"])


def test_finetune_resume_mid_epoch_gives_the_weights_of_an_uninterrupted_run(raptor_folder, tmp_path):
    recipe = load_recipe(FINETUNE)

    def run(args):
        config = recipe.parse_config(recipe.FinetuneConfig, ["--cpu", "--model", str(raptor_folder), "--epochs", "2",
                                                             *TINY_FINETUNE, *map(str, args)])
        try:
            return recipe.training_function(config)
        finally:
            AcceleratorState._reset_state(True)

    full = run(["--output-dir", tmp_path / "full"])
    # 3 steps per epoch: stop after step 4, in the middle of the second epoch, then resume
    assert run(["--output-dir", tmp_path / "part", "--max-steps-this-run", "4"]) == \
        {"global_step": 4, "stopped_early": True}
    state = json.loads((tmp_path / "part" / "checkpoints" / "step_4" / "run_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"]) == (1, 1)
    resumed = run(["--output-dir", tmp_path / "part", "--resume", "latest"])
    assert resumed["training"]["steps"] == full["training"]["steps"] == 6
    assert [e["top1"] for e in resumed["history"]] == [e["top1"] for e in full["history"]]
    assert raptor_zoo.from_pretrained(tmp_path / "part").block_schedule == (5, 7)
    for name in ("", "ema"):
        a = load_file(str(tmp_path / "full" / name / "model.safetensors"))
        b = load_file(str(tmp_path / "part" / name / "model.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_relaxed_adapters_take_the_lr_scale_of_their_own_step():
    model = tiny_raptor(block_schedule=(2, 3, 1), relax_rank=2)
    layer_ids = raptor_layer_ids(model)
    assert layer_ids["relax.0.qkv_a"] == 1 and layer_ids["relax.1.fc2_b"] == 2 and layer_ids["relax.5.fc1_a"] == 6
    assert layer_ids["blocks.1.mlp.fc1.weight"] == 3 and layer_ids["head.weight"] == 7
    scales = per_parameter_lr_scale(model, layer_decay_param_groups(model, 0.05, 0.5))
    assert scales["relax.1.fc2_b"] == pytest.approx(0.5 ** 5) and scales["relax.5.fc1_a"] == pytest.approx(0.5)
