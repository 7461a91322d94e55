"""benchmarks/study_real.py --quick: phases on photos and a digits fixture, Raptors distilled through the recipe,
probe recovery, anytime curves, the report, and a rerun that redoes nothing (offline, a tiny random teacher)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState

REPO = Path(__file__).resolve().parent.parent


def load_study(name: str = "study_real"):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "study_real.py")
    study = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = study  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(study)
    return study


def test_the_grid_runs_its_parts_in_order_and_refuses_unknown_levers():
    study = load_study("study_real_grid")
    with pytest.raises(ValueError, match="--levers \\['warp'\\] are not levers; choose from isolate-last"):
        study.StudyRealConfig(levers=("warp",))
    with pytest.raises(ValueError, match="--parts \\['curve'\\] are not parts"):
        study.StudyRealConfig(parts=("curve",))
    for seed in range(20):  # the paper's control: a random contiguous partition, never the measured max-cut one
        schedule = [int(n) for n in study.random_partition(12, [7, 5], seed)[1:]]
        assert sum(schedule) == 12 and schedule != [7, 5] and min(schedule) >= 1
    config = study.StudyRealConfig(joint_levers=("two-stage", "lr-1e-3"), levers=("ema",), out_dir="/nonexistent")
    names = [run.name for run in study.study_runs(config)]
    assert names == [
        "phases",
        "raptor-joint-k2-s0-150", "raptor-joint-k3-s0-150", "raptor-joint-k4-s0-150", "raptor-joint-k2-s0-r4-150",
        "raptor-joint-k2-s1-150", "raptor-joint-k2-s2-150", "raptor-2stage-k2-s0-150", "raptor-joint-k2-s0-lr-1e-3-150",
        "raptor-2stage-k2-s0-300", "raptor-2stage-k2-s0-600", "raptor-2stage-k2-s0-1200", "raptor-2stage-k3-s0-300",
        "raptor-2stage-k3-s0-1200", "raptor-2stage-k2-s1-600", "raptor-2stage-k2-s2-600",
        "raptor-2stage-k2-s0-ema-300",
        "raptor-2stage-k2-s1-300", "raptor-2stage-k2-s2-300",  # lever-seeds: the levers themselves once they are done
        "raptor-2stage-k2-s0-photos-300"]


def test_two_stage_runs_scale_the_shipped_recipe():
    """A two-stage run of n steps is real_teacher_cpu_k2.yaml with its 600 steps scaled: n/4 per phase, n/2 joint,
    warmup n/10; the pool is a random subset of the MNIST train split, stratified by digit."""
    from raptor_zoo.recipes.distill import DistillConfig
    from raptor_zoo.training import parse_config

    study = load_study("study_real_scale")
    config = study.StudyRealConfig(out_dir="/nonexistent")
    run = parse_config(DistillConfig, study.distill_argv(config, study.Run(3, 1, 600, lever="ema"), 12))
    assert (run.schedule, run.k, run.seed, run.phase_max_steps, run.max_steps, run.warmup_steps) == \
        ("two_stage", 3, 1, 148, 300, 60)
    assert (run.max_train_images, run.ema_decay) == (10_000, 0.99)


@pytest.mark.parametrize("k, steps", [(2, 600), (3, 300)])
def test_the_real_teacher_cpu_configs_are_the_runs_the_study_measured(k, steps):
    """recipes/configs/real_teacher_cpu_k{2,3}.yaml are the study's two-stage runs (k = 2 at 600 steps, k = 3 at 300):
    same teacher, data, stages and optimisation (docs/study_real.md and their headers quote the numbers)."""
    from raptor_zoo.recipes.distill import DistillConfig
    from raptor_zoo.training import parse_config

    study = load_study(f"study_real_config_k{k}")
    config = study.StudyRealConfig(out_dir="/nonexistent")
    measured = parse_config(DistillConfig, study.distill_argv(config, study.Run(k, 0, steps), 12))
    shipped_config = REPO / "recipes" / "configs" / f"real_teacher_cpu_k{k}.yaml"
    shipped = parse_config(DistillConfig, ["--config", str(shipped_config)])
    bookkeeping = {"output_dir", "resume", "cpu", "relax_rank", "phase_images", "checkpoint_every", "keep_checkpoints",
                   "trajectory_cache", "trajectory_cache_dtype"}
    differ = {name: (getattr(measured, name), getattr(shipped, name)) for name in vars(measured)
              if name not in bookkeeping and getattr(measured, name) != getattr(shipped, name)}
    assert differ == {}
    assert (shipped.schedule, shipped.k, shipped.max_steps) == ("two_stage", k, steps // 2)


def test_the_budget_trend_is_a_power_law_of_the_gap_and_says_when_it_reaches_a_target():
    study = load_study("study_real_trend")
    hours = [0.1, 0.2, 0.4, 0.8]
    points = [(h, 1 - 0.04 * (h / 0.1) ** -0.5) for h in hours]  # the gap halves per 4x compute
    intercept, exponent = study.gap_trend(points)
    assert exponent == pytest.approx(-0.5) and study.trend_hours((intercept, exponent), 0.98) == pytest.approx(0.4)
    assert study.gap_trend(points[:2]) is None  # two budgets are a line, not a trend
    assert study.trend_hours(study.gap_trend([(h, 0.9 - 0.01 * h) for h in hours]), 0.98) is None  # gap grows
    curve = [{"k": 2, "seed": 0, "cpu_s": 3600 * h, "optimiser_steps": int(1000 * h), "recovery": v,
              "mean_cosine": {"all": v}} for h, v in points]
    (recovery, cosine) = study._trend_lines(curve, seed=0)
    assert "k = 2 probe recovery: 1 - value ∝ CPU-h^-0.50; 98% would be reached at ≈ 0.40 CPU-h (≈ 400 optimiser " \
           "steps)" in recovery
    assert "4 budgets, not a measurement" in recovery and "the fit does not close" not in cosine
    curve.append(dict(curve[-1], cpu_s=3600 * 1.6, recovery=1.01))  # above the teacher: no gap to fit
    assert "4 budgets; 1 at or above the teacher left out, not a measurement" in study._trend_lines(curve, seed=0)[0]


@pytest.mark.slow
def test_quick_study_runs_every_part_records_and_resumes(tmp_path):
    study = load_study("study_real_quick")
    argv = ["--quick", "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")]
    try:
        summary = study.main(argv)
    finally:
        AcceleratorState._reset_state(True)
    assert summary["runs_pending"] == []
    assert summary["runs_done"] == sorted([
        "phases", "raptor-joint-k2-s0-4", "raptor-joint-k2-s0-r2-4", "raptor-joint-k2-s1-4",
        "raptor-2stage-k2-s0-4", "raptor-joint-k2-s0-isolate-last-4", "raptor-2stage-k2-s0-8", "raptor-2stage-k3-s0-8",
        "raptor-2stage-k2-s1-8", "raptor-2stage-k2-s0-isolate-last-4", "raptor-2stage-k2-s1-4",
        "raptor-2stage-k2-s1-isolate-last-4", "raptor-2stage-k2-s0-photos-4"])
    runs = tmp_path / "out" / "runs"
    phases = json.loads((runs / "phases.json").read_text())
    for image_set in ("photos", "mnist"):
        entry = phases[image_set]
        assert set(entry["schedules"]) == {"2", "3"} and len(entry["subset_schedules"]) == 2
    raptor = json.loads((runs / "raptor-2stage-k3-s0-8.json").read_text())
    assert (raptor["k"], raptor["recipe"], raptor["steps"], raptor["img_size"]) == (3, "two-stage", 8, 56)
    assert raptor["optimiser_steps"] == 3 * 2 + 4  # each of the 3 phases 8/4 steps, then 8/2 joint
    assert len(raptor["raptor_anytime_top1"]) == len(raptor["teacher_anytime_top1"]) == 4
    assert raptor["recovery"] == pytest.approx(raptor["raptor_probe_top1"] / raptor["teacher_probe_top1"])
    assert raptor["cpu_s"] > 0 and raptor["ratio_to_bound"] > 0 and len(raptor["commit"]) >= 40
    assert raptor["teacher_targets"].startswith("cached") and (tmp_path / "work" / "trajectory_cache_56px").is_dir()
    assert {"all", "cls", "patches"} <= set(raptor["mean_cosine"]) <= set(raptor["photo_mean_cosine"])
    pool = raptor["distill_pool"]
    assert (pool["count"], pool["method"]) == (64, "stratified by label") and len(pool["class_histogram"]) == 10
    assert raptor["full_probe"]["eval_images"] == 30 and 0 < raptor["full_probe"]["recovery"]
    mixed = json.loads((runs / "raptor-2stage-k2-s0-photos-4.json").read_text())
    assert mixed["distill_pool"]["count"] == 64 + 16 and mixed["distill_pool"]["class_histogram"]["10"] == 16
    tables = (tmp_path / "out" / "tables.md").read_text()
    for heading in ("## Baseline", "### Levers on the joint stage", "## Budget curve", "### The two probe sizes",
                    "## Levers on the two-stage recipe at 4 steps (seed 0)", "## Outside the distillation data"):
        assert heading in tables, heading
    assert "tiny random DINOv2 (quick)" in tables and "13 of 13 runs done" in tables and "/tmp" not in tables
    for name in ("phases_photos.png", "phases_mnist.png", "anytime.png", "fidelity_by_token.png", "budget_curve.png"):
        assert (tmp_path / "out" / name).stat().st_size > 5_000, name
    before = {p.name: p.stat().st_mtime_ns for p in runs.iterdir()}
    try:
        study.main(argv)
    finally:
        AcceleratorState._reset_state(True)
    assert {p.name: p.stat().st_mtime_ns for p in runs.iterdir()} == before
