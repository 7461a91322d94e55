"""The `raptor-zoo` command line: its options without torch (raptor_zoo_cli), and its commands run in-process."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState

import raptor_zoo.cli
import raptor_zoo_cli
from raptor_zoo.cli import main
from raptor_zoo.training import parse_config
from raptor_zoo_cli import options
from raptor_zoo_cli.distill_config import DistillConfig

REPO = Path(__file__).resolve().parent.parent
DIGITS_CONFIG = REPO / "recipes" / "configs" / "digits_k2.yaml"
HEAVY_PACKAGES = ("torch", "timm", "transformers", "raptor_zoo")
# runs the command line as the console script does, then reports its exit status and the heavy modules it imported
_PROBE = f"""
import json, sys
import raptor_zoo_cli
try:
    status = raptor_zoo_cli.main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
heavy = sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY_PACKAGES!r})
print("PROBE " + json.dumps({{"status": status, "heavy": heavy}}), file=sys.stderr)
"""


def _probe(*argv: str) -> tuple[dict, str, str]:
    """(report, stdout, stderr) of the command line run in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env, timeout=120)
    report = [line for line in run.stderr.splitlines() if line.startswith("PROBE ")]
    assert report, run.stderr
    return json.loads(report[-1][len("PROBE "):]), run.stdout, run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("argv, status, shown", [
    (["--help"], 0, "distill"),
    (["distill", "--bad-flag"], 2, "unrecognized arguments: --bad-flag"),
    (["distill", "--batch-size", "0"], 2, "--batch-size must be >= 1"),
    (["distill", "--config", "missing.yaml"], 2, "not found"),
    (["bench", "--modes", "warp"], 2, "invalid choice: 'warp'"),
    (["nope"], 2, "invalid choice: 'nope'"),
    *[([command.name, "--help"], 0, f"raptor-zoo {command.name}") for command in raptor_zoo_cli.COMMANDS],
])
def test_help_and_argument_errors_import_no_torch(argv, status, shown):
    """--help and bad arguments answer from raptor_zoo_cli alone: no torch, timm, transformers or raptor_zoo."""
    report, out, err = _probe(*argv)
    assert report == {"status": status, "heavy": []}
    assert shown in out + err


@pytest.mark.slow
def test_import_raptor_zoo_registers_and_leaves_datasets_and_the_hub_for_later():
    """`import raptor_zoo` registers every architecture; teachers (datasets) and the Hub folder load on first use."""
    code = ("import sys, timm, raptor_zoo; "
            "later = [m for m in ('datasets', 'raptor_zoo.teachers', 'raptor_zoo.hub', 'raptor_zoo.zoo') "
            "if m in sys.modules]; "
            "registered = [timm.is_model(m) for m in ('raptor_vit_small_patch14_reg4_dinov2_k2', "
            "'vit_digits_patch8_reg4', 'transformers_vision_encoder')]; "
            "print(later, registered, raptor_zoo.load_teacher.__module__, raptor_zoo.from_pretrained.__module__)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.stdout.split() == ["[]", "[True,", "True,", "True]", "raptor_zoo.teachers", "raptor_zoo.hub"], run.stderr


def test_every_distill_config_field_is_a_flag_of_raptor_zoo_distill(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["distill", "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    fields = [field.name for field in dataclasses.fields(DistillConfig)]
    assert len(fields) > 50
    missing = [name for name in fields if f"--{name.replace('_', '-')}" not in text]
    assert not missing
    assert "--config FILE" in text and "(default: 312500)" in text


def test_raptor_zoo_distill_parses_as_the_recipe_does(monkeypatch, tmp_path):
    """The same flags give the same DistillConfig through `raptor-zoo distill` and recipes/distill.py: YAML under
    the command line, over the dataclass defaults."""
    received = []
    monkeypatch.setattr(raptor_zoo.cli, "distill_command", lambda config: received.append(config) or 0)
    argv = ["--config", str(DIGITS_CONFIG), "--max-steps", "7", "--block-schedule", "5,7", "--no-augment",
            "--relax-targets", "qkv", "fc2", "--teacher-kwargs", '{"depth": 12}', "--output-dir", str(tmp_path)]
    assert main(["distill", *argv]) == 0
    (config,) = received
    assert config == parse_config(DistillConfig, argv)
    assert (config.max_steps, config.block_schedule, config.relax_targets) == (7, (5, 7), ("qkv", "fc2"))
    assert config.lr == parse_config(DistillConfig, ["--config", str(DIGITS_CONFIG)]).lr != DistillConfig().lr


def test_raptor_zoo_distill_runs_the_recipe(tmp_path):
    """A tiny run end to end: random-init depth-4 digits teacher, 40 images, 2 steps, a saved Raptor."""
    try:
        status = main(["distill", "--config", str(DIGITS_CONFIG), "--no-teacher-pretrained", "--teacher-kwargs",
                       '{"depth": 4, "init_values": 1.0}', "--max-train-images", "40", "--phase-images", "32",
                       "--eval-max-batches", "1", "--max-steps", "2", "--batch-size", "8", "--checkpoint-every", "0",
                       "--cpu", "--output-dir", str(tmp_path)])
    finally:
        AcceleratorState._reset_state(True)
    assert status == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["training"]["steps"] == 2
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()


def test_mirrored_names_match_the_library():
    """Names the options list without importing the library are the library's own."""
    from raptor_zoo import adaptive, export, phases
    from raptor_zoo.analysis import basins
    from raptor_zoo.analysis import cli as analysis_cli
    from raptor_zoo.distill import losses
    from raptor_zoo.models import recurrent
    from raptor_zoo_cli import distill_config

    assert options.HALTING_CRITERIA == tuple(sorted(adaptive.CRITERIA))
    assert options.DEFAULT_CRITERION == adaptive.DEFAULT_CRITERION
    assert set(options.DEFAULT_THRESHOLDS) == set(adaptive.CRITERIA)
    assert options.PERTURBATIONS == basins.PERTURBATIONS
    assert options.ANALYSIS_KINDS == analysis_cli.KINDS
    assert options.EXPORT_FORMATS == export.FORMATS
    assert options.EXPORT_DTYPES == tuple(export.DTYPES)
    assert (options.PHASE_METRICS, options.PHASE_ALGORITHMS) == (phases.METRICS, phases.ALGORITHMS)
    assert distill_config.RELAX_TARGETS == recurrent.RELAX_TARGETS
    assert distill_config.PAPER_PHASE_TOKEN_WEIGHTS == losses.PAPER_PHASE_TOKEN_WEIGHTS
    assert distill_config.PAPER_JOINT_TOKEN_WEIGHTS == losses.PAPER_JOINT_TOKEN_WEIGHTS



def test_phases_command_on_embedded_teacher(tmp_path, capsys):
    out = tmp_path / "phases_out"
    assert main(["phases", "--teacher", "digits-vit", "--data", "digits", "--k", "2",
                 "--num-images", "64", "--out", str(out)]) == 0
    result = json.loads((out / "phases.json").read_text())
    assert result["teacher"] == "digits-vit" and result["k"] == 2 and result["num_images"] == 64
    assert len(result["block_schedule"]) == 2 and sum(result["block_schedule"]) == 12
    assert [row["k"] for row in result["scores"]] == list(range(1, 7))
    assert (out / "phases.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "block_schedule" in printed and "phases.png" in printed


def test_phases_command_rejects_k_beyond_depth(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["phases", "--teacher", "digits-vit", "--k", "13", "--out", str(tmp_path)])
    assert exit_info.value.code == 2  # argparse's usage error, before any image is read
    assert "--k: k=13 unique blocks is out of range for teacher 'digits-vit' of depth 12" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_phases_command_on_a_flat_folder_of_photos_and_the_api_on_paths(tmp_path):
    """Phase discovery takes what people have: a folder of unlabelled photos, or a list of their paths."""
    import numpy as np
    from PIL import Image

    from raptor_zoo.phases import discover
    from raptor_zoo.teachers import load_teacher

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(12):
        Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(photos / f"{index:02d}.png")
    out = tmp_path / "phases_out"
    assert main(["phases", "--teacher", "digits-vit", "--data", str(photos), "--k", "2", "--num-images", "12",
                 "--batch-size", "5", "--out", str(out)]) == 0
    from_folder = json.loads((out / "phases.json").read_text())
    assert from_folder["num_images"] == 12
    from_paths = discover(load_teacher("digits-vit"), sorted(photos.iterdir()), k=2, batch_size=5, progress=False)
    assert from_paths.num_images == 12 and list(from_paths.block_schedule) == from_folder["block_schedule"]
    np.testing.assert_allclose(from_paths.distance, np.array(from_folder["distance"]), rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        discover(load_teacher("digits-vit"), [photos / "missing.png"], k=2, progress=False)
