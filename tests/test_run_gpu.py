"""benchmarks/run_gpu.sh: the GPU run checked on CPU before a GPU's minutes go to it, and its H100 time estimate.

No timing assertions: the dry run checks that every command of every part runs and records no error; the estimate
is arithmetic on counted FLOPs and stated assumptions."""
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_gpu():
    sys.path.insert(0, str(REPO / "benchmarks"))  # run_gpu.py imports its sibling distill_throughput.py
    try:
        spec = importlib.util.spec_from_file_location("run_gpu", REPO / "benchmarks" / "run_gpu.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
        sys.modules.pop("run_gpu", None)


def test_estimate_counts_compiles_calls_and_commands(run_gpu):
    command = run_gpu.Throughput(teacher=run_gpu.VITS, k=(2, 3), batch_sizes=(1, 256), modes=("eager", "compile"),
                                 dtypes=("bf16",), warmup=3, iters=5, rounds=5)
    estimate = command.estimate()
    assert estimate["compiles"] == 2 * 3  # two compiled cells (batch 1 and 256) of teacher + two Raptors
    with_anytime = dataclasses.replace(command, anytime_steps=(6,)).estimate()
    assert with_anytime["compiles"] == estimate["compiles"] + 3 + 2  # the anytime cell: 3 models + 2 stopped ones
    longer = dataclasses.replace(command, rounds=10).estimate()
    assert longer["seconds"] > estimate["seconds"] and longer["compiles"] == estimate["compiles"]
    tiny = dataclasses.replace(command, modes=("eager", "cudagraphs")).tiny()
    assert (tiny.device, tiny.img_size, tiny.batch_sizes, tiny.modes) == ("cpu", 28, (1, 2), ("eager", "compile"))
    assert "--device cpu" in " ".join(tiny.argv(Path("out")))


def test_errors_recorded_in_rows_are_found(run_gpu, tmp_path):
    """The benchmarks record failures in their rows instead of raising: the run reports them (and fails)."""
    rows = [{"model": "raptor_k2", "mode": "compile", "dtype": "bf16", "batch_size": 2, "error": "RuntimeError: x"},
            {"model": "teacher", "error": None}]
    (tmp_path / "old.json").write_text(json.dumps({"rows": rows}))
    since = (tmp_path / "old.json").stat().st_mtime + 1
    os.utime(tmp_path / "old.json", (since - 10, since - 10))
    (tmp_path / "new.json").write_text(json.dumps({"rows": rows}))
    os.utime(tmp_path / "new.json", (since, since))
    assert run_gpu._recorded_errors(tmp_path, since) == ["new.json: raptor_k2 compile bf16 2: error RuntimeError: x"]


def test_every_gpu_part_is_expected_within_the_budget(run_gpu):
    estimates = run_gpu.estimate_parts(list(run_gpu.PARTS))
    assert set(estimates) == {"bs1", "bs256", "distill", "relax", "flops"}
    over = {name: row["seconds"] for name, row in estimates.items() if row["seconds"] > run_gpu.PART_BUDGET_S}
    assert not over
    report = run_gpu.estimate_report(estimates)
    assert "ESTIMATE" in report and all(f"| {name} |" in report for name in estimates)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_dry_run_runs_every_part_on_cpu(tmp_path):
    """`bash benchmarks/run_gpu.sh --dry-run`: every command at tiny sizes, one result file each, no recorded error."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "run_gpu.sh"), "--dry-run", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=2300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    estimate = json.loads((tmp_path / "estimate.json").read_text())
    assert estimate["dry_run"] and list(estimate["parts"]) == ["bs1", "bs256", "distill", "relax", "flops"]
    assert all(part["seconds"] <= estimate["budget_s"] for part in estimate["parts"].values())
    results = [path for path in tmp_path.glob("*.json") if path.name != "estimate.json"]
    assert len(results) == sum(part["commands"] for part in estimate["parts"].values())  # none overwrote another
    for path in results:
        rows = json.loads(path.read_text())["rows"]
        assert rows and not [row for row in rows if row.get("error") or row.get("flops_error")], path.name
    assert "this dry run (tiny, CPU)" in run.stdout and "done: results in" in run.stdout
