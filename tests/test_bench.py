"""Benchmark machinery (raptor_zoo.bench): runner results, ratios, writers, FLOP parity, CLI defaults.

No timing assertions: speed belongs in benchmarks/, not in tests.
"""
import argparse
import json
import statistics

import pytest
import timm
import torch
import torch.nn as nn
from recorders import adapter_flops, counted_flops, depth_scale_flops
from timm.models.vision_transformer import VisionTransformer

import raptor_zoo  # noqa: F401  (registers the architectures)
from raptor_zoo.bench import (
    add_bench_arguments,
    bench_command,
    benchmark_inference,
    compare_teacher_raptor,
    flops_row,
    markdown_table,
    plot_throughput,
    ratio_stats,
    resolve_bench_settings,
    summarise_latencies,
    write_json,
    write_markdown,
)
from raptor_zoo.flops import count_flops, count_params, flops_table
from raptor_zoo.models.raptor_vit import RAPTOR_ARCHS, RaptorVisionTransformer, create_raptor_from_vit

IMG = 16  # 2x2 patches of 8 px


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_vit(depth: int = 4) -> VisionTransformer:
    return VisionTransformer(img_size=IMG, patch_size=8, embed_dim=32, depth=depth, num_heads=2, num_classes=0,
                             reg_tokens=1, no_embed_class=True, init_values=1e-5)


def _tiny_raptor() -> RaptorVisionTransformer:
    return RaptorVisionTransformer(img_size=IMG, patch_size=8, embed_dim=32, num_heads=2, num_classes=5,
                                   block_schedule=(2, 1))


def _parser() -> argparse.ArgumentParser:
    return add_bench_arguments(argparse.ArgumentParser(), default_results_dir="unused")


def test_benchmark_inference_keys_and_types():
    model = _tiny_raptor()
    row = benchmark_inference(model, batch_size=2, img_size=IMG, device="cpu", warmup=1, iters=2, name="tiny")
    assert row["error"] is None
    assert row["model"] == "tiny" and row["batch_size"] == row["requested_batch_size"] == 2
    assert (row["mode"], row["dtype"], row["num_steps"], row["timed_iters"]) == ("eager", "fp32", None, 2)
    for key in ("latency_ms_median", "latency_ms_p90", "latency_ms_mean", "img_per_sec", "warmup_s"):
        assert isinstance(row[key], float) and row[key] > 0, key
    assert row["latency_ms_min"] <= row["latency_ms_median"] <= row["latency_ms_p90"] <= row["latency_ms_max"]
    assert row["img_per_sec"] == pytest.approx(2 * 1e3 / row["latency_ms_median"])
    assert row["param_count"] == count_params(model)
    assert row["gflops"] == pytest.approx(count_flops(model, (3, IMG, IMG)) / 1e9)
    assert row["peak_memory_mb"] is None and row["memory_kind"] is None  # not measured on CPU
    json.dumps(row)  # every value is JSON-able

    anytime = benchmark_inference(model, batch_size=1, img_size=IMG, device="cpu", warmup=0, iters=1, num_steps=1)
    assert anytime["error"] is None and anytime["num_steps"] == 1
    assert anytime["gflops"] < row["gflops"]  # one of three block applications


def test_benchmark_inference_bf16_autocast_runs_on_cpu():
    row = benchmark_inference(_tiny_raptor(), batch_size=1, img_size=IMG, device="cpu", dtype="bf16", warmup=0,
                              iters=1, count_model_flops=False)
    assert row["error"] is None and row["dtype"] == "bf16" and row["gflops"] is None


class _Failing(nn.Module):
    """Raises on every forward: OOM above `max_batch`, or a plain error."""

    def __init__(self, max_batch: int = 0, oom: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.max_batch = max_batch
        self.oom = oom
        self.seen = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        if not self.oom:
            raise RuntimeError("boom: shapes do not match")
        if x.shape[0] > self.max_batch:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x.mean() * self.weight


def test_oom_steps_the_batch_down_like_timm():
    model = _Failing(max_batch=3)
    row = benchmark_inference(model, batch_size=8, img_size=4, device="cpu", warmup=0, iters=1,
                              count_model_flops=False)
    assert row["error"] is None
    assert (row["requested_batch_size"], row["batch_size"]) == (8, 3)  # decay_batch_step: 8 -> 6 -> 4 -> 3
    assert model.seen[0] == 8 and sorted(set(model.seen)) == [3, 4, 6, 8]


def test_errors_are_recorded_not_raised():
    row = benchmark_inference(_Failing(oom=False), batch_size=4, img_size=4, device="cpu", warmup=1, iters=1,
                              count_model_flops=False)
    assert "boom" in row["error"] and row["batch_size"] == 4 and "img_per_sec" not in row
    oom = benchmark_inference(_Failing(max_batch=0), batch_size=2, img_size=4, device="cpu", warmup=0, iters=1,
                              count_model_flops=False)
    assert "OutOfMemoryError" in oom["error"] and oom["batch_size"] == 1
    no_retry = benchmark_inference(_Failing(max_batch=1), batch_size=4, img_size=4, device="cpu", warmup=0,
                                   iters=1, count_model_flops=False, retry_oom=False)
    assert "OutOfMemoryError" in no_retry["error"] and no_retry["batch_size"] == 4


def test_bad_arguments_raise_before_running():
    with pytest.raises(ValueError, match="mode must be one of"):
        benchmark_inference(_tiny_raptor(), 1, IMG, device="cpu", mode="fast")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        benchmark_inference(_tiny_raptor(), 1, IMG, device="cpu", mode="cudagraphs")
    with pytest.raises(ValueError, match="dtype must be one of"):
        benchmark_inference(_tiny_raptor(), 1, IMG, device="cpu", dtype="fp16")
    with pytest.raises(ValueError, match="Unknown timm teacher"):
        compare_teacher_raptor("vit_not_a_model", k=2, device="cpu")
    with pytest.raises(ValueError, match="anytime steps"):
        compare_teacher_raptor(_tiny_vit(), k=2, device="cpu", anytime_steps=[4], count_model_flops=False)


def test_ratio_stats():
    stats = ratio_stats([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])
    assert stats == {"median": 2.0, "min": 2.0, "max": 3.0, "rounds": 3}
    assert ratio_stats([1.0, None], [2.0, 1.0]) == {"median": 0.5, "min": 0.5, "max": 0.5, "rounds": 1}
    assert ratio_stats([], [])["median"] is None
    with pytest.raises(ValueError, match="paired rounds"):
        ratio_stats([1.0], [1.0, 2.0])
    summary = summarise_latencies([10.0, 30.0, 20.0, 40.0], batch_size=4)
    assert summary["latency_ms_median"] == 25.0 and summary["latency_ms_p90"] == 40.0
    assert summary["img_per_sec"] == pytest.approx(160.0)


@pytest.fixture(scope="module")
def compare_rows():
    return compare_teacher_raptor(
        _tiny_vit(), k=2, batch_sizes=(1, 2), modes=("eager",), dtypes=("fp32",), img_size=IMG, device="cpu",
        warmup=0, iters=1, rounds=3, anytime_steps=[2], anytime_batch_size=1, progress=False)


def test_compare_teacher_raptor_side_by_side(compare_rows):
    main = [r for r in compare_rows if r["cell"] == "main"]
    anytime_cell = [r for r in compare_rows if r["cell"] == "anytime"]
    assert [(r["role"], r["batch_size"]) for r in main] == [
        ("teacher", 1), ("raptor", 1), ("teacher", 2), ("raptor", 2)]
    assert [(r["role"], r["num_steps"]) for r in anytime_cell] == [("teacher", 4), ("raptor", 4), ("anytime", 2)]
    assert all(r["depth"] == 4 for r in compare_rows)
    assert all(r["error"] is None for r in compare_rows)
    teacher, raptor = main[0], main[1]
    assert raptor["k"] == 2 and raptor["block_schedule"] == [2, 2] and raptor["param_count"] < teacher["param_count"]
    # teacher block type: the teacher's FLOPs plus the depth-scaling MLPs (Linear 1->16, 16->3D) of the L = 4 steps
    assert round((raptor["gflops"] - teacher["gflops"]) * 1e9) == 4 * 2 * (16 + 16 * 3 * 32)
    assert anytime_cell[2]["gflops"] < raptor["gflops"]
    for cell in (main[:2], main[2:], anytime_cell):
        reference = cell[0]["round_img_per_sec"]
        assert len(reference) == 3
        for row in cell[1:]:
            ratios = [ours / theirs for ours, theirs in zip(row["round_img_per_sec"], reference)]
            assert row["img_per_sec_ratio"] == pytest.approx(statistics.median(ratios))
            assert (row["img_per_sec_ratio_min"], row["img_per_sec_ratio_max"]) == pytest.approx(
                (min(ratios), max(ratios)))
            assert row["latency_ratio"] == pytest.approx(statistics.median([1 / r for r in ratios]))
            assert row["ratio_rounds"] == 3
    assert "img_per_sec_ratio" not in teacher


def test_writers_produce_files(compare_rows, tmp_path):
    environment = {"device": "cpu", "torch": torch.__version__}
    settings = {"img_size": IMG, "notes": ["hidden"], "out": "hidden"}
    json_path = write_json(compare_rows, tmp_path / "a" / "bench.json", environment, settings, ["2 shared cores"])
    payload = json.loads(json_path.read_text())
    assert set(payload) == {"environment", "settings", "notes", "rows"}
    assert payload["notes"] == ["2 shared cores"] and len(payload["rows"]) == len(compare_rows)
    png = plot_throughput(compare_rows, tmp_path / "bench.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = write_markdown(compare_rows, tmp_path / "bench.md", environment, settings, ["2 shared cores"],
                        plot_name=png.name).read_text()
    assert "2 shared cores" in md and "hidden" not in md and "](bench.png)" in md
    assert "## Anytime inference" in md and "raptor_k2@2" in md
    table = markdown_table([r for r in compare_rows if r["cell"] == "main"])
    assert len(table.splitlines()) == 2 + 4 and "| eager | fp32 | 2 | raptor_k2 | 4 |" in table


@pytest.mark.parametrize("teacher", sorted({spec["teacher"] for spec in RAPTOR_ARCHS.values()}))
def test_flop_parity_of_every_registered_pair(teacher):
    """With the teacher's block type a Raptor runs the teacher's FLOPs plus its depth-scale MLPs', exactly (math SDPA
    on the meta device): 1.00001-1.00004x, as the README says."""
    with torch.device("meta"):
        teacher_model = timm.create_model(teacher, img_size=224)
        teacher_flops = count_flops(teacher_model, (3, 224, 224))
        for arch in [a for a, spec in RAPTOR_ARCHS.items() if spec["teacher"] == teacher]:
            raptor = timm.create_model(arch)
            assert raptor.block_type == "teacher" and raptor.num_unique_blocks == RAPTOR_ARCHS[arch]["k"]
            excess = depth_scale_flops(teacher_model.embed_dim, len(teacher_model.blocks))
            assert count_flops(raptor, (3, 224, 224)) == teacher_flops + excess, arch
            assert 0 < excess / teacher_flops < 5e-5, arch


def test_flops_row_reports_swiglu_and_depth_scale():
    row = flops_row("raptor_vit_small_patch14_reg4_dinov2_k2")
    assert row["teacher"] == "vit_small_patch14_reg4_dinov2" and row["block_schedule"] == [7, 5]
    excess = depth_scale_flops(384, 12)
    assert row["depth_scale_flops"] == excess
    assert row["raptor_gflops"] * 1e9 == pytest.approx(row["teacher_gflops"] * 1e9 + excess, rel=1e-12, abs=0)
    assert row["flops_ratio"] == pytest.approx(1 + excess / (row["teacher_gflops"] * 1e9), rel=1e-12)
    assert 1.25 < row["swiglu_flops_ratio"] < 1.40  # the paper's block is ~1.3x heavier
    # 16 + 3D outputs' weights and biases per block: Linear(1 -> 16) and Linear(16 -> 3D), in each of the k = 2 blocks
    assert row["depth_scale_params"] == 2 * (16 + 16 + 16 * 3 * 384 + 3 * 384)
    assert row["raptor_params"] < row["swiglu_params"] < row["teacher_params"]
    assert row["block_params_ratio"] == pytest.approx(
        row["raptor_block_params"] / row["teacher_block_params"])
    # a module is counted from its architecture; its teacher comes from the argument (or raptor_meta)
    model = timm.create_model("raptor_vit_small_patch14_reg4_dinov2_k2", img_size=56)
    module_row = flops_row(model, teacher="vit_small_patch14_reg4_dinov2", img_size=56)
    assert module_row["depth_scale_flops"] == excess and module_row["img_size"] == 56
    assert module_row["flops_ratio"] == pytest.approx(1 + excess / (module_row["teacher_gflops"] * 1e9), rel=1e-12)
    with pytest.raises(ValueError, match="pass teacher="):
        flops_row(model)
    with pytest.raises(ValueError, match="Unknown Raptor arch"):
        flops_row("raptor_nope")


def test_flops_table_is_what_the_card_and_the_benchmark_show():
    """One count of FLOPs and parameters (raptor_zoo.flops.flops_table) behind flops_row and the model card."""
    teacher = _tiny_vit()
    raptor = create_raptor_from_vit(teacher, block_schedule=(3, 1))
    table = flops_table(raptor, teacher, (3, IMG, IMG))
    assert table["teacher_flops"] == counted_flops(teacher, (3, IMG, IMG))
    assert table["raptor_flops"] == table["teacher_flops"] + depth_scale_flops(32, 4)
    assert table["flops_ratio"] == table["raptor_flops"] / table["teacher_flops"]
    unique_block = sum(p.numel() for p in raptor.unique_blocks[0].parameters())
    assert table["raptor_block_params"] == 2 * unique_block
    assert table["teacher_block_params"] == sum(p.numel() for p in teacher.blocks.parameters())
    assert table["params_ratio"] == table["raptor_params"] / table["teacher_params"] < 1
    assert (table["relax_rank"], table["relax_flops"], table["relax_params"]) == (0, 0, 0)
    alone = flops_table(raptor, None, (3, IMG, IMG))
    assert alone["raptor_flops"] == table["raptor_flops"]
    assert all(alone[key] is None for key in ("teacher_flops", "teacher_params", "teacher_block_params",
                                              "flops_ratio", "params_ratio", "block_params_ratio"))


def test_quick_cpu_selects_eager_only():
    parser = _parser()
    quick = resolve_bench_settings(parser.parse_args(
        ["--teacher", "vit_small_patch14_reg4_dinov2", "--device", "cpu", "--quick"]))
    assert quick.modes == ["eager"] and quick.dtypes == ["fp32"] and quick.batch_sizes == [1, 8]
    assert quick.k == [2] and quick.anytime_batch_size == 1 and quick.anytime_steps == [6]
    assert any("eager mode only" in note for note in quick.notes)
    asked = resolve_bench_settings(parser.parse_args(
        ["--teacher", "vit_small_patch14_reg4_dinov2", "--device", "cpu", "--quick", "--modes", "compile"]))
    assert asked.modes == ["compile"] and not any("eager mode only" in note for note in asked.notes)
    full = resolve_bench_settings(parser.parse_args(["--arch", "raptor_vit_small_patch14_reg4_dinov2_k3",
                                                     "--device", "cpu"]))
    assert full.modes == ["eager", "compile"] and full.k == [] and full.out.startswith("unused/cpu-")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_bench_settings(parser.parse_args(["--teacher", "vit_small_patch14_reg4_dinov2", "--device", "cpu",
                                                  "--modes", "cudagraphs"]))
    with pytest.raises(ValueError, match="pass --teacher"):
        resolve_bench_settings(parser.parse_args(["--device", "cpu"]))
    with pytest.raises(ValueError, match="Unknown timm teacher"):
        resolve_bench_settings(parser.parse_args(["--teacher", "vit_nope", "--device", "cpu"]))


def test_bench_command_end_to_end(tmp_path):
    args = _parser().parse_args([
        "--teacher", "vit_digits_patch8_reg4", "--k", "2", "--device", "cpu", "--quick", "--img-size", "32",
        "--batch-sizes", "1", "2", "--out", str(tmp_path), "--note", "test run", "--num-threads", "1"])
    paths = bench_command(args)
    assert {p.name for p in paths.values()} == {
        f"throughput_vit_digits_patch8_reg4_k2_eager_fp32_b1-2.{ext}" for ext in ("json", "md", "png")}
    payload = json.loads(paths["json"].read_text())
    assert payload["settings"]["modes"] == ["eager"] and "test run" in payload["notes"]
    assert payload["environment"]["host_cpu_count"] >= 1 and payload["environment"]["timm"] == timm.__version__
    assert payload["environment"]["torch_num_threads"] == 1 and payload["settings"]["num_threads"] == 1
    raptor_rows = [r for r in payload["rows"] if r["role"] == "raptor" and r["cell"] == "main"]
    assert [r["batch_size"] for r in raptor_rows] == [1, 2]
    assert all(r["img_per_sec_ratio"] > 0 and r["error"] is None for r in raptor_rows)


def test_relaxed_arch_rows_count_the_adapters():
    row = flops_row("raptor_vit_small_patch14_reg4_dinov2_k2_r4")
    assert row["relax_rank"] == 4 and row["teacher"] == "vit_small_patch14_reg4_dinov2"
    assert row["relax_params"] == 16 * 4 * 384 * 12  # docs/design.md §4: 16 r D per step, all four layers adapted
    with torch.device("meta"):
        teacher = timm.create_model("vit_small_patch14_reg4_dinov2", img_size=224)
    adapters = adapter_flops(teacher.blocks[0], 4, ("qkv", "proj", "fc1", "fc2"), 1 + 4 + 16 * 16, 12)
    assert row["relax_flops"] == adapters
    excess = depth_scale_flops(384, 12) + adapters
    assert row["flops_ratio"] == pytest.approx(1 + excess / (row["teacher_gflops"] * 1e9), rel=1e-12)
