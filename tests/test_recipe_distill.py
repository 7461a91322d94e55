"""recipes/distill.py end to end: launched with `accelerate launch` on CPU (as accelerate's tests/test_examples.py
does), plus in-process runs for the fast checks (bad input, non-finite loss, two-stage resume).

Every run is tiny: a random-init digits-shaped teacher of depth 4, 40 training images, batch 8, a few steps."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from accelerate.utils import write_basic_config
from safetensors.torch import load_file

from raptor_zoo.training import parse_config

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "distill.py"
DIGITS_CONFIG = REPO / "recipes" / "configs" / "digits_k2.yaml"
TINY = [
    "--config", str(DIGITS_CONFIG),
    "--no-teacher-pretrained", "--teacher-kwargs", '{"depth": 4, "init_values": 1.0}',
    "--max-train-images", "40", "--phase-images", "32", "--eval-max-batches", "1",
    "--max-steps", "6", "--checkpoint-every", "2", "--keep-checkpoints", "5", "--lr", "1e-3",
]


@pytest.fixture(scope="module")
def accelerate_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("accelerate") / "default_config.yml"
    write_basic_config(mixed_precision="no", save_location=str(path))
    return path


def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def start(accelerate_config, args, num_processes=1):
    """`accelerate launch` the recipe on CPU; several processes go through the distributed launcher (gloo on CPU)."""
    launcher = ["--num_processes", str(num_processes)] + (["--multi_gpu"] if num_processes > 1 else [])
    command = ["accelerate", "launch", "--config_file", str(accelerate_config), *launcher, str(RECIPE), "--cpu",
               *map(str, args)]
    return subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process, expect_success=True, timeout=600):
    output, _ = process.communicate(timeout=timeout)
    if expect_success and process.returncode != 0:
        pytest.fail(f"recipe failed with exit code {process.returncode}:\n{output[-6000:]}")
    return output


def weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


def assert_same_weights(first, second, atol=0.0):
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


@pytest.mark.slow
def test_resume_gives_the_weights_of_an_uninterrupted_run(accelerate_config, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    runs = [start(accelerate_config, TINY + ["--batch-size", "8", "--output-dir", full]),
            start(accelerate_config, TINY + ["--batch-size", "8", "--output-dir", part, "--max-steps-this-run", "3"])]
    finish(runs[0])
    stopped = finish(runs[1])
    assert "Continue with --resume latest" in stopped
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["step_2", "step_3"]
    assert not (part / "model.safetensors").exists()
    run_state = json.loads((part / "checkpoints" / "step_3" / "run_state.json").read_text())
    assert run_state["global_step"] == 3 and run_state["batches_in_epoch"] == 3  # 5 batches per epoch: mid-epoch

    resumed = finish(start(accelerate_config, TINY + ["--batch-size", "8", "--output-dir", part, "--resume", "latest"]))
    assert "Resumed from" in resumed and "at step 3" in resumed
    assert_same_weights(full, part)
    metrics = json.loads((part / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 6
    assert len(metrics["cosine"]["all"]) == 5  # layers 0..4
    for name in ("config.json", "README.md", "fidelity.png", "phases.json", "args.yaml"):
        assert (part / name).is_file(), name


@pytest.mark.slow
def test_two_processes_match_one_process_at_the_same_global_batch(accelerate_config, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    runs = [start(accelerate_config, TINY + ["--batch-size", "8", "--output-dir", one]),
            start(accelerate_config, TINY + ["--batch-size", "4", "--output-dir", two], num_processes=2)]
    finish(runs[0])
    finish(runs[1])
    assert_same_weights(one, two, atol=1e-5)
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (one, two)]
    assert metrics[1]["training"]["num_processes"] == 2
    assert metrics[0]["training"]["global_batch_size"] == metrics[1]["training"]["global_batch_size"] == 8
    assert metrics[0]["num_images"] == metrics[1]["num_images"] == 8
    assert metrics[0]["mean_cosine"]["all"] == pytest.approx(metrics[1]["mean_cosine"]["all"], abs=1e-5)


def test_missing_data_dir_fails_fast_through_accelerate_launch(accelerate_config, tmp_path):
    missing = tmp_path / "no" / "such" / "imagefolder"
    process = start(accelerate_config, TINY + ["--dataset", missing, "--output-dir", tmp_path / "out"])
    output = finish(process, expect_success=False)
    assert process.returncode != 0
    assert "FileNotFoundError" in output and str(missing) in output
    assert not (tmp_path / "out" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------ in-process runs

@pytest.fixture(scope="module")
def recipe():
    import raptor_zoo.recipes.distill as module
    return module


@pytest.fixture
def run_recipe(recipe):
    """Run the recipe in this process (no launcher): parse the flags, train, reset Accelerate's global state."""
    def run(args):
        config = parse_config(recipe.DistillConfig, [*map(str, TINY), "--cpu", "--batch-size", "8", *map(str, args)])
        try:
            return recipe.training_function(config)
        finally:
            AcceleratorState._reset_state(True)
    yield run
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("args, error, message", [
    (["--k", "7"], ValueError, "k=7 unique blocks is out of range .* depth 4"),
    (["--block-schedule", "2", "3"], ValueError, "sums to 5 .* depth 4"),
    (["--phase-index", "3", "--schedule", "two_stage"], ValueError, "phase_index 3 is out of range"),
    (["--dataset", "./missing_folder/"], FileNotFoundError, "No image directory"),
    (["--init-from", "/nonexistent/run"], FileNotFoundError, "model.safetensors"),
])
def test_bad_input_fails_before_training(run_recipe, tmp_path, args, error, message):
    with pytest.raises(error, match=message):
        run_recipe(args + ["--output-dir", tmp_path / "out"])
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_fewer_images_than_a_batch_train_on_smaller_batches_and_say_so(run_recipe, tmp_path, capsys):
    """A user's folder of a few photos with a GPU config's batch of 64 runs (issue 26), on batches of what is there."""
    result = run_recipe(["--max-train-images", "5", "--output-dir", tmp_path])
    assert "5 training images are fewer than one batch of --batch-size 8 per process: using batches of 5" in \
        capsys.readouterr().out
    assert result["training"]["global_batch_size"] == 5
    assert "batch_size: 5" in (tmp_path / "args.yaml").read_text()


def test_resume_with_another_student_shape_fails(run_recipe, tmp_path):
    run_recipe(["--output-dir", tmp_path, "--block-schedule", "2", "2", "--max-steps-this-run", "2"])
    with pytest.raises(ValueError, match=r"block_schedule: checkpoint \[2, 2\] vs now \[1, 3\]"):
        run_recipe(["--output-dir", tmp_path, "--block-schedule", "1", "3", "--resume", "latest"])
    with pytest.raises(FileNotFoundError, match="not found"):
        run_recipe(["--output-dir", tmp_path, "--resume", tmp_path / "checkpoints" / "step_99"])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(run_recipe, tmp_path):
    with pytest.raises(FloatingPointError, match="Non-finite loss .* Last good checkpoint: .*step_1"):
        run_recipe(["--output-dir", tmp_path, "--block-schedule", "2", "2", "--lr", "1e30", "--grad-clip", "none",
                    "--checkpoint-every", "1", "--max-steps", "100", "--tf-anneal-ratio", "0"])
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints and checkpoints[-1].startswith("step_")
    assert not (tmp_path / "model.safetensors").exists()


def _changed(before, after, prefix):
    """Whether any tensor whose key contains `prefix` differs between two checkpoints' weights."""
    keys = [key for key in before if prefix in key]
    assert keys, prefix
    return any(not torch.equal(before[key], after[key]) for key in keys)


def test_two_stage_run_resumes_across_a_stage_boundary(run_recipe, recipe, monkeypatch, tmp_path):
    # which unique blocks each stage trains (the optimiser gets the parameters that require gradients) and applies,
    # and on which segment of layers
    stages = []
    task_class = recipe.TrajectoryDistillationTask

    def recording_task(student, teacher, **kwargs):
        task = task_class(student, teacher, **kwargs)
        for handle in stages[-1]["handles"] if stages else []:
            handle.remove()
        applied = set()
        trainable = {j for j, block in enumerate(student.unique_blocks) if any(p.requires_grad for p in block.parameters())}
        stages.append({"segment": task.segment, "trainable": trainable, "applied": applied, "handles": [
            block.register_forward_pre_hook(
                lambda module, args, j=j: applied.add(j) if module.training and torch.is_grad_enabled() else None)
            for j, block in enumerate(student.unique_blocks)]})
        return task

    monkeypatch.setattr(recipe, "TrajectoryDistillationTask", recording_task)
    two_stage = ["--schedule", "two_stage", "--block-schedule", "2", "2", "--max-steps", "2", "--eval-every", "2"]
    full = run_recipe(two_stage + ["--output-dir", tmp_path / "full"])
    assert [stage["name"] for stage in full["training"]["stages"]] == ["phase_0", "phase_1", "joint"]
    assert [entry["stage"] for entry in full["history"]] == ["phase_0", "phase_1"]
    # stage 1 trains each block alone on its own segment (layers 0..2, then 2..4); stage 2 chains both over 0..4
    assert [(stage["segment"], stage["trainable"], stage["applied"]) for stage in stages] == [
        ((0, 2), {0}, {0}), ((2, 4), {1}, {1}), ((0, 4), {0, 1}, {0, 1})]
    # the weights after every step: the checkpoints of a run stopped before its end (a finished run keeps its last)
    every_step = two_stage + ["--output-dir", tmp_path / "steps", "--checkpoint-every", "1", "--keep-checkpoints", "6"]
    run_recipe(every_step + ["--max-steps-this-run", "5"])
    step = {n: load_file(str(tmp_path / "steps" / "checkpoints" / f"step_{n}" / "model.safetensors"))
            for n in range(1, 6)}
    run_recipe(every_step + ["--resume", "latest"])
    assert [path.name for path in (tmp_path / "steps" / "checkpoints").iterdir()] == ["step_6"]
    step[6] = {f"student.{key}": value for key, value in load_file(str(tmp_path / "steps" / "model.safetensors")).items()}
    assert _changed(step[1], step[2], "blocks.0.") and not _changed(step[1], step[2], "blocks.1.")  # phase_0
    assert not _changed(step[2], step[4], "blocks.0.") and _changed(step[2], step[4], "blocks.1.")  # phase_1
    assert _changed(step[4], step[6], "blocks.0.") and _changed(step[4], step[6], "blocks.1.")  # joint
    assert not any(_changed(step[1], step[6], name) for name in ("patch_embed.", "norm.", "head."))
    # stop in the middle of phase_1 (and of its first epoch: 5 batches of 8 per epoch), then resume
    stopped = run_recipe(two_stage + ["--output-dir", tmp_path / "part", "--max-steps-this-run", "3"])
    assert stopped == {"global_step": 3, "stopped_early": True}
    run_state = json.loads((tmp_path / "part" / "checkpoints" / "step_3" / "run_state.json").read_text())
    assert (run_state["stage_index"], run_state["stage_step"], run_state["batches_in_epoch"]) == (1, 1, 1)
    resumed = run_recipe(two_stage + ["--output-dir", tmp_path / "part", "--resume", "latest"])
    assert resumed["training"]["steps"] == 6
    assert_same_weights(tmp_path / "full", tmp_path / "part")
    config = json.loads((tmp_path / "part" / "config.json").read_text())
    assert config["block_schedule"] == [2, 2]


def test_relaxed_run_trains_adapters_and_saves_a_relaxed_raptor(run_recipe, tmp_path):
    result = run_recipe(["--output-dir", tmp_path, "--block-schedule", "2", "2", "--relax-rank", "2",
                         "--relax-targets", "qkv", "fc1"])
    assert result["training"]["steps"] == 6
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["model_args"]["relax_rank"], config["model_args"]["relax_targets"]) == (2, ["qkv", "fc1"])
    assert config["raptor_meta"]["teacher_img_size"] == [32, 32]  # the size its teacher ran at
    saved = weights(tmp_path)
    assert {key.split(".")[1] for key in saved if key.startswith("relax.")} == {"0", "1", "2", "3"}
    assert not any(key.startswith("relax.") and ("proj" in key or "fc2" in key) for key in saved)


def test_adapters_only_after_a_pure_raptor_keeps_the_shared_blocks(run_recipe, tmp_path):
    run_recipe(["--output-dir", tmp_path / "pure", "--block-schedule", "2", "2"])
    args = ["--block-schedule", "2", "2", "--relax-rank", "3", "--init-from", tmp_path / "pure",
            "--train-adapters-only"]
    run_recipe(args + ["--output-dir", tmp_path / "relaxed", "--max-steps", "2"])
    pure, relaxed = weights(tmp_path / "pure"), weights(tmp_path / "relaxed")
    for key, value in pure.items():
        torch.testing.assert_close(relaxed[key], value, rtol=0, atol=0, msg=f"{key} changed")
    adapters = [key for key in relaxed if key.startswith("relax.")]
    assert len(adapters) == 4 * 4 * 2 and all(relaxed[key].abs().sum() > 0 for key in adapters)


@pytest.mark.parametrize("args, message", [
    (["--train-adapters-only"], "--train-adapters-only trains the per-step adapters"),
    (["--relax-rank", "-1"], "--relax-rank must be >= 0"),
    (["--relax-targets", "qkv", "bogus"], "relax_targets must be a non-empty set"),
])
def test_bad_relax_options_fail_before_training(run_recipe, tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        run_recipe(args + ["--output-dir", tmp_path / "out"])
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_resume_with_another_relax_rank_fails(run_recipe, tmp_path):
    run_recipe(["--output-dir", tmp_path, "--block-schedule", "2", "2", "--relax-rank", "2", "--max-steps-this-run", "2"])
    with pytest.raises(ValueError, match=r"relax_rank: checkpoint 2 vs now 4"):
        run_recipe(["--output-dir", tmp_path, "--block-schedule", "2", "2", "--relax-rank", "4", "--resume", "latest"])
