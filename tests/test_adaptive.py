"""Adaptive depth: one halting loop for Raptors and teachers; exits change nothing else, and really shrink the batch."""
import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from raptor_zoo.adaptive import (
    CRITERIA,
    AdaptiveOutput,
    DepthStepper,
    RecurrentModel,
    RecurrentStepper,
    TeacherStepper,
    adaptive_forward,
    as_stepper,
    calibrate_threshold,
    exit_steps_for,
    halting_scores,
)
from raptor_zoo.models.raptor_timm import raptor_from_model_args
from raptor_zoo.models.raptor_vit import RaptorVisionTransformer
from raptor_zoo.teachers import Teacher

IMG = 16
SCHEDULE = (2, 4)  # L = 6, first phase ends after step 2
DEPTH = sum(SCHEDULE)
BATCH = 12


def _sharpen_head(model: nn.Module) -> nn.Module:
    """Scale the random head so softmax confidences spread over (0, 1) and images exit at different steps."""
    with torch.no_grad():
        model.head.weight.mul_(30.0)
    return model.eval()


@pytest.fixture(scope="module")
def raptor() -> RaptorVisionTransformer:
    torch.manual_seed(0)
    model = RaptorVisionTransformer(img_size=IMG, patch_size=8, embed_dim=32, num_heads=2, num_classes=5,
                                    block_schedule=SCHEDULE, reg_tokens=2)
    with torch.no_grad():  # move the zero-initialised depth-scale gates off identity
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return _sharpen_head(model)


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    torch.manual_seed(1)
    vit = VisionTransformer(img_size=IMG, patch_size=8, embed_dim=32, depth=DEPTH, num_heads=2, num_classes=5)
    return Teacher(_sharpen_head(vit))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(BATCH, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))


def _model(name: str, raptor, teacher):
    return raptor if name == "raptor" else teacher


def _phases(name: str) -> dict:
    return {} if name == "raptor" else {"phase_boundaries": (0, SCHEDULE[0], DEPTH)}


def _mixed_threshold(model, images, criterion: str = "confidence", early_steps: int = 2, **kwargs) -> float:
    """A threshold at which some images exit early (at ``early_steps`` or more different steps) and some run to L."""
    min_steps = kwargs.pop("min_steps", SCHEDULE[0])
    scores, _ = halting_scores(model, images, criterion, **kwargs)
    candidates = scores[torch.isfinite(scores)].unique()
    for threshold in torch.nextafter(candidates, torch.full_like(candidates, math.inf)).tolist():
        exits = exit_steps_for(scores, threshold, min_steps, DEPTH)
        if (exits == DEPTH).any() and len(set(exits[exits < DEPTH].tolist())) >= early_steps:
            return threshold
    raise AssertionError(f"no threshold mixes early and full-depth exits; scores:\n{scores}")


def _count_block_batches(model) -> tuple[list[int], list]:
    blocks = getattr(model, "unique_blocks", None) or model.blocks  # each shared block once (a Raptor hands out L views)
    sizes: list[int] = []
    handles = [block.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0])) for block in blocks]
    return sizes, handles


def test_the_raptor_offers_the_recurrent_interface_and_a_teacher_gets_a_stepper(raptor, teacher):
    assert isinstance(raptor, RecurrentModel)
    assert isinstance(as_stepper(raptor), RecurrentStepper)
    assert isinstance(as_stepper(teacher), TeacherStepper)
    assert isinstance(as_stepper(teacher.model), TeacherStepper)  # a plain timm ViT is wrapped as a Teacher
    assert as_stepper(raptor).phase_boundaries == (0, 2, 6)
    assert not isinstance(teacher, RecurrentModel)


@pytest.mark.parametrize("name", ["raptor", "teacher"])
def test_threshold_zero_is_full_depth_and_bit_equal_to_forward(name, raptor, teacher, images):
    model = _model(name, raptor, teacher)
    with torch.no_grad():
        out = adaptive_forward(model, images, threshold=0.0, **_phases(name))
        expected = model(images)
    assert isinstance(out, AdaptiveOutput)
    assert torch.equal(out.logits, expected)
    assert out.exit_steps.tolist() == [DEPTH] * BATCH and out.mean_steps == DEPTH
    assert out.batch_sizes == [BATCH] * DEPTH and out.block_applications == BATCH * DEPTH


@pytest.mark.parametrize("name", ["raptor", "teacher"])
def test_mixed_exits_keep_order_and_shapes_and_full_depth_images_unchanged(name, raptor, teacher, images):
    model = _model(name, raptor, teacher)
    threshold = _mixed_threshold(model, images, **_phases(name))
    with torch.inference_mode():
        out = adaptive_forward(model, images, threshold=threshold, **_phases(name))
        full = model(images)
        _, step_logits = halting_scores(model, images, **_phases(name))
    assert out.logits.shape == full.shape and out.exit_steps.shape == (BATCH,)
    ran_full = out.exit_steps == DEPTH
    assert ran_full.any() and (~ran_full).any()
    assert torch.equal(out.logits[ran_full], full[ran_full])  # halting never changes an image run to full depth
    for i, step in enumerate(out.exit_steps.tolist()):  # image i gets its own logits at its own exit step
        torch.testing.assert_close(out.logits[i], step_logits[i, step - 1], rtol=1e-5, atol=1e-5)
    if name == "raptor":
        early = (~ran_full).nonzero()[0].item()
        step = out.exit_steps[early].item()
        with torch.no_grad():
            anytime = raptor(images[early:early + 1], num_steps=step)
        torch.testing.assert_close(out.logits[early:early + 1], anytime, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["raptor", "teacher"])
def test_finished_images_leave_the_batch(name, raptor, teacher, images):
    model = _model(name, raptor, teacher)
    threshold = _mixed_threshold(model, images, **_phases(name))
    sizes, handles = _count_block_batches(model)
    try:
        with torch.no_grad():
            out = adaptive_forward(model, images, threshold=threshold, **_phases(name))
    finally:
        for handle in handles:
            handle.remove()
    expected = [int((out.exit_steps > step).sum()) for step in range(DEPTH)]
    assert sizes == expected == out.batch_sizes
    assert sizes[-1] < BATCH and sum(sizes) == out.block_applications < BATCH * DEPTH


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
@pytest.mark.parametrize("name", ["raptor", "teacher"])
def test_each_criterion_exits_where_the_full_batch_scores_say(name, criterion, raptor, teacher, images):
    model = _model(name, raptor, teacher)
    threshold = _mixed_threshold(model, images, criterion, early_steps=1, **_phases(name))
    with torch.no_grad():
        out = adaptive_forward(model, images, threshold=threshold, criterion=criterion, **_phases(name))
        scores, _ = halting_scores(model, images, criterion, **_phases(name))
    assert out.exit_steps.tolist() == exit_steps_for(scores, threshold, SCHEDULE[0], DEPTH).tolist()


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_min_steps_defaults_to_the_end_of_the_first_phase(criterion, raptor, images):
    with torch.no_grad():
        default = adaptive_forward(raptor, images, threshold=1e9, criterion=criterion)
        later = adaptive_forward(raptor, images, threshold=1e9, criterion=criterion, min_steps=4)
        first = adaptive_forward(raptor, images, threshold=1e9, criterion=criterion, min_steps=1)
    assert default.exit_steps.tolist() == [SCHEDULE[0]] * BATCH
    assert later.exit_steps.tolist() == [4] * BATCH
    # a change criterion needs a previous step to compare with, so its earliest exit is step 2
    assert first.exit_steps.tolist() == [2 if CRITERIA[criterion].needs_previous else 1] * BATCH


def test_max_steps_with_threshold_zero_is_anytime_inference(raptor, teacher, images):
    with torch.no_grad():
        out = adaptive_forward(raptor, images, threshold=0.0, max_steps=3)
        assert torch.equal(out.logits, raptor(images, num_steps=3))
        teacher_out = adaptive_forward(teacher, images, threshold=0.0, min_steps=1, max_steps=3)
        truncated = teacher.forward_head_from_state(teacher.trajectory(images, [3])[:, 0])
    assert torch.equal(teacher_out.logits, truncated)
    assert out.batch_sizes == [BATCH] * 3 and out.exit_steps.tolist() == [3] * BATCH


def test_any_model_offering_a_stepper_gets_halting():
    """A duck-typed DepthStepper (here: residual MLP steps) runs through the same loop."""

    class ToyStepper:
        depth = 4
        phase_boundaries = (0, 1, 4)

        def __init__(self) -> None:
            torch.manual_seed(3)
            self.layer = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

        def embed(self, images):
            return images.flatten(1)[:, :8]

        def step(self, x, step):
            return x + torch.tanh(self.layer(x))

        def finish(self, x):
            return 10 * self.head(x)

        def features(self, x):
            return x

    stepper = ToyStepper()
    assert isinstance(stepper, DepthStepper)
    with torch.no_grad():
        out = adaptive_forward(stepper, torch.randn(6, 1, 4, 4), threshold=0.5)
    assert out.logits.shape == (6, 3) and ((out.exit_steps >= 1) & (out.exit_steps <= 4)).all()


def test_calibrate_threshold_meets_a_target_mean_depth(raptor, images):
    with torch.no_grad():
        threshold = calibrate_threshold(raptor, images, target_mean_steps=4.0)
        out = adaptive_forward(raptor, images, threshold=threshold)
        full_threshold = calibrate_threshold(raptor, images, target_mean_steps=DEPTH)
        shallow_threshold = calibrate_threshold(raptor, images, target_mean_steps=SCHEDULE[0])
        shallow = adaptive_forward(raptor, images, threshold=shallow_threshold)
    assert 4.0 <= out.mean_steps < DEPTH
    assert full_threshold == 0.0
    assert shallow.mean_steps == SCHEDULE[0]


def test_compiled_blocks_follow_the_shrinking_batch(raptor, images):
    """torch.compile of the blocks (dynamo, dynamic shapes) survives batch sizes changing at every exit."""
    threshold = _mixed_threshold(raptor, images)
    with torch.no_grad():
        eager = adaptive_forward(raptor, images, threshold=threshold)
    compiled = raptor_from_model_args(raptor.model_args).eval()
    compiled.load_state_dict(raptor.state_dict())
    for block in compiled.blocks:
        block.compile(backend="eager", dynamic=True)
    with torch.no_grad():
        out = adaptive_forward(compiled, images, threshold=threshold)
    assert out.exit_steps.tolist() == eager.exit_steps.tolist()
    torch.testing.assert_close(out.logits, eager.logits)


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=-0.1), "threshold must be a finite number >= 0"),
    (dict(threshold=float("nan")), "threshold must be a finite number >= 0"),
    (dict(threshold=float("inf")), "threshold must be a finite number >= 0"),
    (dict(threshold=True), "threshold must be a finite number >= 0"),
    (dict(threshold=0.1, criterion="entropy"), "Unknown halting criterion 'entropy'"),
    (dict(threshold=0.1, min_steps=0), "min_steps=0 is out of range; use 1 <= min_steps <= max_steps = 6"),
    (dict(threshold=0.1, min_steps=7), "min_steps=7 is out of range"),
    (dict(threshold=0.1, min_steps=4, max_steps=3), "min_steps=4 is out of range; use 1 <= min_steps <= max_steps = 3"),
    (dict(threshold=0.1, max_steps=0), "max_steps=0 is out of range; use 1 <= max_steps <= L = 6"),
    (dict(threshold=0.1, max_steps=7), "max_steps=7 is out of range"),
    (dict(threshold=0.1, phase_boundaries=(0, 2, 6)), "phase_boundaries is only taken for a teacher"),
])
def test_bad_knobs_raise_before_any_block_runs(kwargs, message, raptor, images):
    sizes, handles = _count_block_batches(raptor)
    try:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            adaptive_forward(raptor, images, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    assert sizes == []


def test_bad_models_and_images_raise(raptor, teacher, images):
    with pytest.raises(ValueError, match="no phase boundaries .* pass min_steps=m"):
        adaptive_forward(teacher, images, threshold=0.1)
    with pytest.raises(ValueError, match="phase_boundaries must rise strictly from 0 to the teacher depth 6"):
        adaptive_forward(teacher, images, threshold=0.1, phase_boundaries=(0, 7, 6))
    with pytest.raises(TypeError, match="adaptive depth needs a DepthStepper"):
        adaptive_forward(nn.Linear(3, 3), images, threshold=0.1)
    with pytest.raises(ValueError, match=r"images must be a non-empty normalised \[B, C, H, W\] tensor"):
        adaptive_forward(raptor, images[0], threshold=0.1)
    with pytest.raises(ValueError, match="target_mean_steps=1.0 is out of range"):
        calibrate_threshold(raptor, images, target_mean_steps=1.0)


@pytest.mark.slow
def test_bench_adaptive_end_to_end_on_the_shipped_digits_models(tmp_path):
    """`raptor-zoo bench --adaptive`: the shipped Raptor and teacher, one threshold, one round, every output."""
    import json

    from raptor_zoo.cli import main

    assert main(["bench", "--adaptive", "--num-images", "24", "--thresholds", "0.1", "--batch-sizes", "1", "8",
                 "--batch1-stride", "6", "--rounds", "2", "--warmup", "0", "--device", "cpu", "--num-threads", "1",
                 "--out", str(tmp_path), "--note", "test run"]) == 0
    stem = "adaptive_raptor-digits-k2_digits_confidence"
    assert {p.name for p in tmp_path.iterdir()} == {f"{stem}.{ext}" for ext in ("json", "md", "png")}
    payload = json.loads((tmp_path / f"{stem}.json").read_text())
    assert payload["models"] == {"raptor": "raptor-digits-k2", "teacher": "digits-vit"}
    assert payload["min_steps"] == payload["phase_boundaries"][1] and "test run" in payload["notes"]
    rows = payload["rows"]
    assert [(r["role"], r["threshold"], r["batch_size"]) for r in rows] == [
        (role, threshold, batch) for batch in (1, 8) for role in ("raptor", "teacher") for threshold in (None, 0.1)]
    assert [r["num_images"] for r in rows] == [4] * 4 + [24] * 4
    for row in rows:
        assert len(row["seconds"]) == 2 and row["img_per_sec"] > 0
        if row["threshold"] is None:
            assert row["mean_steps"] == 12 and row["speedup"] == 1.0
        else:
            assert payload["min_steps"] <= row["mean_steps"] <= 12
            assert row["block_reduction"] == pytest.approx(12 / row["mean_steps"])
    for role in ("raptor", "teacher"):
        curves = payload["curves"][role]
        assert [p["num_steps"] for p in curves["anytime"]] == list(range(1, 13))
        assert set(curves["simulated"]) == set(CRITERIA)
        full = next(r for r in rows if r["role"] == role and r["threshold"] is None and r["batch_size"] == 8)
        assert curves["anytime"][-1]["accuracy"] == full["accuracy"]  # the anytime curve ends at full depth


@pytest.mark.parametrize("flags, message", [
    (["--k", "2"], "--k: throughput-benchmark flags, not used with --adaptive"),
    (["--thresholds", "0"], "--thresholds must all be > 0"),
    (["--rounds", "0"], "need --batch-sizes >= 1, --rounds >= 1"),
    (["--min-steps", "0"], "--min-steps must be >= 1"),
])
def test_bench_adaptive_rejects_bad_flags_before_loading(flags, message, capsys):
    from raptor_zoo.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--adaptive", "--out", "unused", *flags])
    assert message in capsys.readouterr().err


def test_timed_sweep_rows_match_the_halting_loop(raptor, teacher, images):
    """The benchmark's timed rows: same exits as adaptive_forward, speed-up against the same model's full depth."""
    from raptor_zoo.bench_adaptive import _make_configs, anytime_curve, simulated_sweep, time_configs

    labels = torch.arange(BATCH) % 5
    threshold = _mixed_threshold(raptor, images)
    configs = _make_configs(raptor, teacher, ("tiny-raptor", "tiny-teacher"), "confidence", [threshold], SCHEDULE[0])
    with torch.no_grad():
        rows = time_configs(configs, images, labels, batch_size=BATCH, rounds=2, warmup=0, depth=DEPTH)
        expected = adaptive_forward(raptor, images, threshold=threshold)
        scores, step_logits = halting_scores(raptor, images)
    assert [(r["model"], r["threshold"]) for r in rows] == [
        ("tiny-raptor", None), ("tiny-raptor", threshold), ("tiny-teacher", None), ("tiny-teacher", threshold)]
    raptor_row = rows[1]
    assert raptor_row["mean_steps"] == expected.mean_steps < DEPTH
    assert raptor_row["accuracy"] == float((expected.logits.argmax(-1) == labels).float().mean())
    assert rows[0]["speedup"] == rows[2]["speedup"] == 1.0 and len(raptor_row["seconds"]) == 2
    curve = anytime_curve(step_logits, labels)
    assert curve[-1]["accuracy"] == rows[0]["accuracy"] and len(curve) == DEPTH
    simulated = simulated_sweep(scores, step_logits, labels, SCHEDULE[0], [0.0, threshold])
    assert simulated[0]["mean_steps"] == DEPTH and simulated[1]["mean_steps"] == raptor_row["mean_steps"]
    assert simulated[1]["accuracy"] == raptor_row["accuracy"]
