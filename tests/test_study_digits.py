"""benchmarks/study_digits.py: the --quick grid end to end (teachers, phase metrics, Raptors, relaxed Raptors,
report), resuming without redoing finished runs, and the lock files that let several workers share a grid."""
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from accelerate.state import AcceleratorState

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_digits", REPO / "benchmarks" / "study_digits.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_study(study, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    argv = ["--quick", "--relax-ranks", "2", "--relax-rates", "0", "--work-dir", str(root / "work"),
            "--out-dir", str(root / "out")]
    try:
        summary = study.main(argv)
    finally:
        AcceleratorState._reset_state(True)
    return study, argv, root, summary


def test_quick_grid_records_every_run_and_reports(quick_study):
    study, argv, root, summary = quick_study
    runs = sorted(p.stem for p in (root / "out" / "runs").glob("*.json"))
    assert runs == ["raptor-dp0-s0-k2", "raptor-dp0-s0-k2-r2", "raptor-dp0.2-s0-k2", "teacher-dp0-s0",
                    "teacher-dp0.2-s0"]
    teacher = json.loads((root / "out" / "runs" / "teacher-dp0.2-s0.json").read_text())
    distance = np.asarray(teacher["distance"])
    assert distance.shape == (12, 12) and np.allclose(distance, distance.T) and np.allclose(np.diag(distance), 0)
    metrics = teacher["phase_metrics"]
    off_diagonal = distance[~np.eye(12, dtype=bool)].mean()
    assert metrics["mean_offdiag_distance"] == pytest.approx(off_diagonal)
    assert sum(metrics["k2"]["block_schedule"]) == 12 and 0 < metrics["k2"]["cut_fraction"] <= 1
    assert len(teacher["anytime_accuracy"]) == 12 and teacher["drop_path_mode"] == "uniform"

    relaxed = json.loads((root / "out" / "runs" / "raptor-dp0-s0-k2-r2.json").read_text())
    pure = json.loads((root / "out" / "runs" / "raptor-dp0-s0-k2.json").read_text())
    # D = 128, 12 steps, rank 2 on qkv, proj, fc1 and fc2: 12 x 2 x ((128+384) + (128+128) + (128+512) + (512+128))
    assert relaxed["params"] - pure["params"] == 12 * 2 * (512 + 256 + 640 + 640)
    assert relaxed["pure_params"] == pure["params"] and relaxed["flops"] > pure["flops"] == relaxed["pure_flops"]
    assert relaxed["recovery"] == pytest.approx(relaxed["raptor_accuracy"] / relaxed["teacher_accuracy"])
    assert len(pure["anytime_accuracy"]) == 12 and pure["anytime_accuracy"][-1] == pytest.approx(pure["raptor_accuracy"])

    assert summary["runs_recorded"] == summary["runs_planned"] == 5
    assert [row["relax_rank"] for row in summary["relaxation"]] == [0, 2]
    for name in summary["plots"] + ["summary.json", "tables.md"]:
        assert (root / "out" / name).stat().st_size > 0, name
    assert set(summary["plots"]) >= {"recovery_vs_k.png", "anytime.png", "fit_vs_drop_path.png", "relaxation.png"}
    assert "## Relaxation" in (root / "out" / "tables.md").read_text()


def test_rerun_skips_finished_runs(quick_study):
    study, argv, root, _ = quick_study
    before = {p.name: p.stat().st_mtime_ns for p in (root / "out" / "runs").iterdir()}
    config = study.parse_config(study.StudyConfig, argv)
    assert study.work_through(config, study.study_runs(config)) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (root / "out" / "runs").iterdir()} == before


def test_a_missing_teacher_folder_is_trained_again_and_checked_against_its_record(quick_study, tmp_path):
    study, argv, root, _ = quick_study
    shutil.copytree(root, tmp_path / "study")
    moved = [str(tmp_path / "study" / arg[len(str(root)) + 1:]) if arg.startswith(str(root)) else arg for arg in argv]
    config = study.parse_config(study.StudyConfig, moved[:2] + ["1"] + moved[3:])  # --relax-ranks 1: one new run
    teacher_dir, teacher_record = Path(config.work_dir) / "teacher-dp0-s0", study.record_path(config, study.Run(0.0, 0))
    shutil.rmtree(teacher_dir)  # a fresh clone: the records are committed, the models are not
    recorded = json.loads(teacher_record.read_text())
    teacher_record.write_text(json.dumps(dict(recorded, held_out_accuracy=recorded["held_out_accuracy"] - 0.5)))
    try:
        with pytest.raises(RuntimeError, match="not the same teacher"):
            study.work_through(config, study.study_runs(config))
        teacher_record.write_text(json.dumps(recorded))
        assert study.work_through(config, study.study_runs(config)) == 1
    finally:
        AcceleratorState._reset_state(True)
    assert (teacher_dir / "model.safetensors").is_file()
    assert json.loads(study.record_path(config, study.Run(0.0, 0, 2, 1)).read_text())["relax_rank"] == 1


def test_claims_are_exclusive_and_dead_owners_are_taken_over(study, tmp_path):
    config = study.StudyConfig(work_dir=str(tmp_path), out_dir=str(tmp_path / "out"))
    run = study.Run(0.1, 0, k=2)
    assert study.claim(config, run) and not study.claim(config, run)
    study.release(config, run)
    lock = tmp_path / "locks" / f"{run.name}.lock"
    lock.write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": os.uname().nodename}))  # no such process
    assert study.claim(config, run)
    assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_grid_order_and_options(study):
    config = study.StudyConfig(seeds=(0, 1), drop_path_rates=(0.0, 0.2), ks=(2,), relax_ranks=(4,), relax_rates=(0.0,))
    names = [run.name for run in study.study_runs(config)]
    assert names[:4] == ["teacher-dp0-s0", "teacher-dp0.2-s0", "teacher-dp0-s1", "teacher-dp0.2-s1"]
    assert names[-2:] == ["raptor-dp0-s0-k2-r4", "raptor-dp0-s1-k2-r4"]
    full = study.StudyConfig(full=True, seeds=(0,), drop_path_rates=(0.0,))
    assert [run.k for run in study.study_runs(full) if run.k] == [1, 2, 3, 4, 12]
    with pytest.raises(ValueError, match="--relax-rates \\[0.5\\] are not in --drop-path-rates"):
        study.StudyConfig(relax_ranks=(4,), relax_rates=(0.5,))
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        study.StudyConfig(workers=0)
