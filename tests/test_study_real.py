"""benchmarks/study_real.py --quick: phases on photos and a digits fixture, Raptors distilled through the recipe,
probe recovery, anytime curves, the report, and a rerun that redoes nothing (offline, a tiny random teacher)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_unknown_levers_are_refused_with_the_choices():
    spec = importlib.util.spec_from_file_location("study_real_levers", REPO / "benchmarks" / "study_real.py")
    study = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = study
    spec.loader.exec_module(study)
    with pytest.raises(ValueError, match="--levers \\['warp'\\] are not levers; choose from isolate-last"):
        study.StudyRealConfig(levers=("warp",))
    for seed in range(20):  # the paper's control: a random contiguous partition, never the measured max-cut one
        schedule = [int(n) for n in study.random_partition(12, [7, 5], seed)[1:]]
        assert sum(schedule) == 12 and schedule != [7, 5] and min(schedule) >= 1
    assert study.random_partition(12, [7, 5], 3) == study.random_partition(12, [7, 5], 3)
    names = [run.name for run in study.study_runs(study.StudyRealConfig(levers=("two-stage",), budget_steps=(300,)))]
    assert names == ["phases", "raptor-k2-s0-150", "raptor-k3-s0-150", "raptor-k4-s0-150", "raptor-k2-s0-r4-150",
                     "raptor-k2-s1-150", "raptor-k2-s2-150", "raptor-k2-s0-two-stage-150", "raptor-k2-s0-300"]


def test_quick_study_records_phases_and_raptors_and_resumes(tmp_path):
    spec = importlib.util.spec_from_file_location("study_real", REPO / "benchmarks" / "study_real.py")
    study = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = study  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(study)
    argv = ["--quick", "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")]
    try:
        summary = study.main(argv)
    finally:
        AcceleratorState._reset_state(True)
    assert summary["runs_done"] == ["phases", "raptor-k2-s0-2", "raptor-k2-s0-4", "raptor-k2-s0-isolate-last-2",
                                    "raptor-k2-s0-r2-2"]
    assert summary["runs_pending"] == []
    phases = json.loads((tmp_path / "out" / "runs" / "phases.json").read_text())
    for image_set in ("photos", "mnist"):
        entry = phases[image_set]
        assert set(entry["schedules"]) == {"2", "3"} and len(entry["subset_schedules"]) == 2
        assert all(0.0 <= value <= 1.0 for value in entry["subset_agreement"].values())
    raptor = json.loads((tmp_path / "out" / "runs" / "raptor-k2-s0-r2-2.json").read_text())
    assert (raptor["k"], raptor["relax_rank"], raptor["steps"], raptor["img_size"]) == (2, 2, 2, 56)
    assert len(raptor["raptor_anytime_top1"]) == len(raptor["teacher_anytime_top1"]) == 4
    assert raptor["recovery"] == pytest.approx(raptor["raptor_probe_top1"] / raptor["teacher_probe_top1"])
    assert raptor["bound_s_per_step"] > 0 and raptor["ratio_to_bound"] > 0
    assert {"all", "cls", "patches"} <= set(raptor["mean_cosine"])
    by_size = raptor["probe_by_train_size"]
    assert by_size["train_images"] == [15, 30, 60] and len(by_size["teacher_top1"]) == len(by_size["raptor_top1"]) == 3
    assert by_size["raptor_top1"][-1] == pytest.approx(raptor["raptor_probe_top1"])
    lever = json.loads((tmp_path / "out" / "runs" / "raptor-k2-s0-isolate-last-2.json").read_text())
    assert lever["block_schedule"] == [3, 1] and lever["lever"] == "isolate-last" and lever["steps"] == 2
    tables = (tmp_path / "out" / "tables.md").read_text()
    assert "## Levers on k = 2 at 2 steps" in tables and "| isolate-last |" in tables
    assert "tiny random DINOv2 (quick)" in tables and "5 of 5 runs done" in tables and "/tmp" not in tables
    for name in ("phases_photos.png", "phases_mnist.png", "anytime.png", "fidelity_by_token.png", "budget_k2.png"):
        assert (tmp_path / "out" / name).stat().st_size > 5_000, name
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").iterdir()}
    try:
        study.main(argv)
    finally:
        AcceleratorState._reset_state(True)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").iterdir()} == before


def test_the_real_teacher_cpu_config_is_the_lever_the_study_measured():
    """recipes/configs/real_teacher_cpu_k2.yaml is the study's two-stage run: same teacher, data, stages and
    optimisation (docs/study_real.md quotes its numbers)."""
    from raptor_zoo.distill.recipe import DistillConfig
    from raptor_zoo.training import parse_config

    spec = importlib.util.spec_from_file_location("study_real_config", REPO / "benchmarks" / "study_real.py")
    study = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = study
    spec.loader.exec_module(study)
    config = study.StudyRealConfig()
    measured = parse_config(DistillConfig, study.distill_argv(config, study.Run(2, 0, 0, 150, "two-stage"), 12))
    shipped = parse_config(DistillConfig, ["--config", str(REPO / "recipes" / "configs" / "real_teacher_cpu_k2.yaml")])
    bookkeeping = {"output_dir", "resume", "cpu", "relax_rank"}
    differ = {name: (getattr(measured, name), getattr(shipped, name)) for name in vars(measured)
              if name not in bookkeeping and getattr(measured, name) != getattr(shipped, name)}
    assert differ == {}
    assert (shipped.schedule, shipped.phase_max_steps, shipped.max_steps, shipped.k) == ("two_stage", 37, 75, 2)
