"""raptor_zoo.training: config parsing, atomic checkpoints and resume, drop-path; and the shipped digits teacher."""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import safetensors
import timm
import torch
import torch.nn as nn
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration
from timm.layers import DropPath

import raptor_zoo  # noqa: F401  (registers the digits teacher)
from raptor_zoo.data import create_loader, load_digits_split
from raptor_zoo.models.digits_vit import DIGITS_VIT_WEIGHTS
from raptor_zoo.training import (
    CheckpointManager,
    epoch_dataloader,
    parse_config,
    resume_position,
    save_config,
    save_run_config,
    set_drop_path,
    start_run,
)


@dataclass
class ExampleConfig:
    """Example recipe config."""
    output_dir: str = field(default="out", metadata={"help": "where results go"})
    lr: float = 1e-3
    epochs: int = 10
    use_ema: bool = False
    max_steps: int | None = None
    block_schedule: tuple[int, ...] = (7, 5)
    image_size: tuple[int, int] = (32, 32)
    weights: list[float] = field(default_factory=lambda: [0.45, 0.1, 0.45])
    precision: Literal["no", "bf16"] = "no"


def write_yaml(path: Path, values: dict) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_parse_config_defaults():
    assert parse_config(ExampleConfig, []) == ExampleConfig()


def test_parse_config_precedence_cli_over_yaml_over_defaults(tmp_path):
    config_file = write_yaml(tmp_path / "c.yaml", {"lr": 0.1, "epochs": 3, "block_schedule": [4, 3, 3, 2]})
    config = parse_config(ExampleConfig, ["--config", config_file, "--epochs", "5"])
    assert config.lr == 0.1                      # YAML over default
    assert config.epochs == 5                    # CLI over YAML
    assert config.block_schedule == (4, 3, 3, 2)  # YAML list -> tuple
    assert config.output_dir == "out"            # default kept


def test_parse_config_kebab_and_snake_flags():
    kebab = parse_config(ExampleConfig, ["--output-dir", "a", "--max-steps", "7"])
    snake = parse_config(ExampleConfig, ["--output_dir", "a", "--max_steps", "7"])
    assert kebab == snake and kebab.output_dir == "a" and kebab.max_steps == 7
    assert parse_config(ExampleConfig, ["--max-steps", "none"]).max_steps is None


def test_parse_config_bool_sequence_and_literal_flags(tmp_path):
    config = parse_config(ExampleConfig, ["--use-ema", "--block-schedule", "4,3,3,2", "--image-size", "64", "48",
                                          "--weights", "1", "2.5", "--precision", "bf16"])
    assert config.use_ema is True and config.block_schedule == (4, 3, 3, 2) and config.image_size == (64, 48)
    assert config.weights == [1.0, 2.5] and config.precision == "bf16"
    config_file = write_yaml(tmp_path / "c.yaml", {"use_ema": True})
    assert parse_config(ExampleConfig, ["-c", config_file, "--no-use-ema"]).use_ema is False
    with pytest.raises(SystemExit):
        parse_config(ExampleConfig, ["--precision", "fp8"])
    with pytest.raises(SystemExit):
        parse_config(ExampleConfig, ["--image-size", "1,2,3"])
    with pytest.raises(SystemExit):
        parse_config(ExampleConfig, ["--epochs", "2.5"])


def test_parse_config_yaml_errors(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['learning_rate'\].*'lr'"):
        parse_config(ExampleConfig, ["--config", write_yaml(tmp_path / "a.yaml", {"learning_rate": 1.0})])
    with pytest.raises(TypeError, match="'epochs' expects an int"):
        parse_config(ExampleConfig, ["--config", write_yaml(tmp_path / "b.yaml", {"epochs": "many"})])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        parse_config(ExampleConfig, ["--config", str(tmp_path / "missing.yaml")])


def test_parse_config_help_shows_defaults(tmp_path, capsys):
    config_file = write_yaml(tmp_path / "c.yaml", {"epochs": 3})
    with pytest.raises(SystemExit):
        parse_config(ExampleConfig, ["--config", config_file, "--help"])
    help_text = capsys.readouterr().out
    assert "--output-dir OUTPUT_DIR, --output_dir OUTPUT_DIR" in help_text
    assert "where results go (default: out)" in help_text
    assert "(default: 3)" in help_text  # the YAML value is the shown default
    assert "--no-use-ema" in help_text


def test_save_config_round_trips(tmp_path):
    config = parse_config(ExampleConfig, ["--block-schedule", "5,4,3", "--max-steps", "9", "--use-ema"])
    path = save_config(config, tmp_path / "run")
    assert path == tmp_path / "run" / "args.yaml"
    assert parse_config(ExampleConfig, ["--config", str(path)]) == config


@dataclass
class RenamedConfig:
    """A config whose fields were renamed: `dataset` was `data`, `max_train_images` was `max_images`."""
    dataset: str = field(default="digits", metadata={"help": "images", "aliases": ["data"]})
    max_train_images: int | None = field(default=None, metadata={"aliases": ["max_images"]})
    use_ema: bool = field(default=False, metadata={"aliases": ["ema"]})


def test_parse_config_aliases_are_flags_and_yaml_keys(tmp_path, capsys):
    assert parse_config(RenamedConfig, ["--data", "a"]).dataset == "a"
    assert parse_config(RenamedConfig, ["--max-images", "3"]).max_train_images == 3
    assert parse_config(RenamedConfig, ["--max_images", "none"]).max_train_images is None
    assert parse_config(RenamedConfig, ["--ema"]).use_ema is True
    old = tmp_path / "old.yaml"
    old.write_text("data: b\nmax-images: 4\n")
    config = parse_config(RenamedConfig, ["--config", str(old)])
    assert (config.dataset, config.max_train_images) == ("b", 4)
    assert parse_config(RenamedConfig, ["--config", str(old), "--dataset", "c"]).dataset == "c"  # CLI over YAML
    saved = yaml.safe_load(save_config(config, tmp_path / "run").read_text())
    assert saved == {"dataset": "b", "max_train_images": 4, "use_ema": False}  # written under the field's name
    with pytest.raises(SystemExit):
        parse_config(RenamedConfig, ["--help"])
    help_text = capsys.readouterr().out
    assert re.search(r"--data DATASET\s+alias of --dataset", help_text)
    assert re.search(r"--ema, --no-ema\s+alias of --use-ema", help_text)


@pytest.mark.parametrize("argv, flags", [
    (["--dataset", "a", "--data", "b"], "--dataset and --data"),
    (["--use-ema", "--no-ema"], "--use-ema and --ema"),
])
def test_parse_config_refuses_a_field_and_its_alias_together(argv, flags, capsys):
    with pytest.raises(SystemExit):
        parse_config(RenamedConfig, argv)
    assert f"{flags} both give the field" in capsys.readouterr().err


def test_parse_config_refuses_a_yaml_key_and_its_alias_together(tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text("dataset: a\ndata: b\n")
    with pytest.raises(ValueError, match="gives both 'dataset' and 'data', two names of the field 'dataset'; "
                                         "keep only 'dataset'"):
        parse_config(RenamedConfig, ["--config", str(both)])


def test_parse_config_refuses_an_alias_that_names_another_field():
    @dataclass
    class Clash:
        dataset: str = field(default="a", metadata={"aliases": ["data"]})
        data: str = "b"

    with pytest.raises(TypeError, match="Clash.dataset: alias 'data' is already the name or an alias of field 'data'"):
        parse_config(Clash, [])


@dataclass
class RunConfig:
    """The run fields start_run reads."""
    output_dir: str = "out"
    seed: int = 3
    cpu: bool = True
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_accumulation_steps: int = 2


def test_start_run_is_the_recipes_prologue(tmp_path, capsys):
    AcceleratorState._reset_state(True)
    try:
        config = RunConfig(output_dir=str(tmp_path / "run"))
        accelerator, output_dir = start_run(config)
        assert output_dir == tmp_path / "run" and accelerator.gradient_accumulation_steps == 2
        assert parse_config(RunConfig, ["--config", str(output_dir / "args.yaml")]) == config
        assert torch.initial_seed() == 3 and "gradient_accumulation_steps: 2" in capsys.readouterr().out
        assert accelerator.dataloader_config.use_seedable_sampler and accelerator.dataloader_config.data_seed == 3
        AcceleratorState._reset_state(True)
        later = RunConfig(output_dir=str(tmp_path / "later"), seed=5)
        accelerator, output_dir = start_run(later, seedable_data=False, write_config=False)
        assert not output_dir.exists() and not accelerator.dataloader_config.use_seedable_sampler
        save_run_config(accelerator, later)
        assert (output_dir / "args.yaml").is_file()
    finally:
        AcceleratorState._reset_state(True)


# ------------------------------------------------------------------------------------------ checkpoints

@pytest.fixture
def accelerator():
    AcceleratorState._reset_state(True)
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(True)


def make_training_objects(accelerator, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return accelerator.prepare(model, optimizer)


def train_step(model, optimizer, accelerator):
    loss = model(torch.randn(5, 4)).pow(2).mean()
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad()


def test_checkpoint_save_is_atomic_and_prunes(accelerator, tmp_path):
    model, optimizer = make_training_objects(accelerator, seed=0)
    manager = CheckpointManager(accelerator, tmp_path, keep_last=2)
    assert manager.latest() is None
    for step in (1, 2, 3):
        train_step(model, optimizer, accelerator)
        path = manager.save(step)
        assert path == tmp_path / "checkpoints" / f"step_{step}" and (path / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_3"]
    assert manager.latest() == tmp_path / "checkpoints" / "step_3"


def test_checkpoint_resume_restores_model_optimizer_and_step(accelerator, tmp_path):
    model, optimizer = make_training_objects(accelerator, seed=0)
    manager = CheckpointManager(accelerator, tmp_path)
    for _ in range(3):
        train_step(model, optimizer, accelerator)
    manager.save(3)
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    saved_exp_avg = optimizer.state_dict()["state"][0]["exp_avg"].clone()

    AcceleratorState._reset_state(True)
    restarted = Accelerator(cpu=True)
    model2, optimizer2 = make_training_objects(restarted, seed=1)
    assert not torch.equal(model2.state_dict()["0.weight"], saved_weights["0.weight"])
    manager2 = CheckpointManager(restarted, tmp_path)
    assert manager2.progress.step == 0
    assert manager2.resume("latest") == 3 and manager2.progress.step == 3
    assert all(torch.equal(model2.state_dict()[k], v) for k, v in saved_weights.items())
    assert torch.equal(optimizer2.state_dict()["state"][0]["exp_avg"], saved_exp_avg)
    assert manager2.resume(tmp_path / "checkpoints" / "step_3") == 3


def test_interrupted_save_keeps_previous_checkpoint(accelerator, tmp_path, monkeypatch):
    model, optimizer = make_training_objects(accelerator, seed=0)
    manager = CheckpointManager(accelerator, tmp_path)
    train_step(model, optimizer, accelerator)
    manager.save(1)
    step_1_weights = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(model, optimizer, accelerator)
    real_save_state = accelerator.save_state

    def save_state_then_crash(output_dir, **kwargs):
        real_save_state(output_dir, **kwargs)
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(accelerator, "save_state", save_state_then_crash)
    with pytest.raises(KeyboardInterrupt):
        manager.save(2)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_1"]
    assert manager.latest() == tmp_path / "checkpoints" / "step_1"
    assert manager.resume("latest") == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in step_1_weights.items())


def test_stale_temporary_folder_is_ignored_and_cleaned(accelerator, tmp_path):
    model, optimizer = make_training_objects(accelerator, seed=0)
    manager = CheckpointManager(accelerator, tmp_path)
    stale = tmp_path / "checkpoints" / ".tmp-step_9"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    assert manager.latest() is None
    manager.save(4)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_4"]


def test_checkpoint_manager_errors(tmp_path):
    AcceleratorState._reset_state(True)
    automatic = Accelerator(cpu=True, project_config=ProjectConfiguration(
        project_dir=str(tmp_path), automatic_checkpoint_naming=True))
    with pytest.raises(ValueError, match="automatic_checkpoint_naming"):
        CheckpointManager(automatic, tmp_path)
    AcceleratorState._reset_state(True)
    manager = CheckpointManager(Accelerator(cpu=True), tmp_path)
    with pytest.raises(FileNotFoundError, match="No checkpoint to resume from"):
        manager.resume("latest")
    with pytest.raises(FileNotFoundError, match="step_7"):
        manager.resume(tmp_path / "checkpoints" / "step_7")
    AcceleratorState._reset_state(True)


def test_resume_position_and_skipped_batches(accelerator):
    assert resume_position(45, 22) == (2, 1)
    assert resume_position(44, 22) == (2, 0)
    assert resume_position(45, 22, gradient_accumulation_steps=2) == (2, 2)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        resume_position(3, 0)
    loader = accelerator.prepare(torch.utils.data.DataLoader(torch.arange(10), batch_size=2))
    skipped = epoch_dataloader(accelerator, loader, epoch=1, resume_epoch=1, batches_to_skip=2)
    assert [batch.tolist() for batch in skipped] == [[4, 5], [6, 7], [8, 9]]
    full = epoch_dataloader(accelerator, loader, epoch=2, resume_epoch=1, batches_to_skip=2)
    assert len(list(full)) == 5


# ------------------------------------------------------------------------------------------ drop path

def drop_rates(model):
    return [block.drop_path1.drop_prob if isinstance(block.drop_path1, DropPath) else 0.0 for block in model.blocks]


def test_set_drop_path_linear_matches_timm_and_uniform_is_flat():
    reference = timm.create_model("vit_digits_patch8_reg4", drop_path_rate=0.2)
    model = timm.create_model("vit_digits_patch8_reg4")
    assert set_drop_path(model, 0.2, "linear") == pytest.approx(drop_rates(reference))
    assert drop_rates(model) == pytest.approx(drop_rates(reference))
    assert set_drop_path(model, 0.2, "uniform") == [0.2] * 12
    assert drop_rates(model) == [0.2] * 12
    assert all(block.drop_path2.drop_prob == 0.2 for block in model.blocks)
    with pytest.raises(ValueError, match="linear' or 'uniform"):
        set_drop_path(model, 0.2, "cosine")
    with pytest.raises(TypeError, match="drop_path1"):
        set_drop_path(nn.Linear(2, 2), 0.1)


# ------------------------------------------------------------------------------------------ shipped teacher

@torch.no_grad()
def held_out_accuracy(model):
    data_config = timm.data.resolve_model_data_config(model)
    loader = create_loader(load_digits_split("test"), data_config, batch_size=120, is_training=False)
    correct = sum((model(images).argmax(-1) == labels).sum().item() for images, labels in loader)
    return correct / 360


def test_shipped_digits_teacher_loads_offline_and_is_accurate(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert DIGITS_VIT_WEIGHTS.stat().st_size <= 10 * 2**20
    with safetensors.safe_open(DIGITS_VIT_WEIGHTS, "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"F16"}
    model = timm.create_model("vit_digits_patch8_reg4.digits", pretrained=True).eval()
    assert next(model.parameters()).dtype == torch.float32
    accuracy = held_out_accuracy(model)
    assert accuracy >= 0.95
    shipped = json.loads((DIGITS_VIT_WEIGHTS.parent / "config.json").read_text())
    assert shipped["architecture"] == "vit_digits_patch8_reg4"
    assert accuracy == pytest.approx(shipped["held_out_accuracy_fp16_weights"], abs=1e-9)
    random_init = timm.create_model("vit_digits_patch8_reg4", pretrained=False)
    assert not torch.equal(random_init.head.weight, model.head.weight)
