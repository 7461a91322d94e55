"""`raptor-zoo demo` end to end on a tiny budget: teacher -> phases -> distil -> evaluate -> save -> table."""
import json

from recorders import adapter_flops, depth_scale_flops

from raptor_zoo import from_pretrained
from raptor_zoo.cli import main
from raptor_zoo.teachers import load_teacher

DIGITS_DIM, DIGITS_DEPTH, DIGITS_TOKENS = 128, 12, 1 + 4 + 4 * 4  # cls, 4 registers, 4x4 patches of 8 px


def test_demo_writes_a_loadable_raptor_and_the_table(tmp_path, capsys):
    out = tmp_path / "demo_out"
    assert main(["demo", "--out", str(out), "--max-steps", "3"]) == 0
    for name in ("model.safetensors", "config.json", "README.md", "phase_heatmap.png", "fidelity.png",
                 "demo_summary.json", "demo_summary.md"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "demo_summary.json").read_text())
    teacher, raptor = summary["rows"]
    # teacher block type: the teacher's FLOPs plus the depth-scale MLPs'
    assert teacher["flops"] > 0 and raptor["flops"] - teacher["flops"] == depth_scale_flops(DIGITS_DIM, DIGITS_DEPTH)
    assert raptor["params"] < teacher["params"] / 4
    assert 0 < raptor["accuracy"] <= 1 and raptor["accuracy_ratio"] == raptor["accuracy"] / teacher["accuracy"]
    model = from_pretrained(out)
    assert model.num_unique_blocks == 2 and len(model.blocks) == sum(model.block_schedule) and list(model.block_schedule) == summary["block_schedule"]
    printed = capsys.readouterr().out
    assert "| Raptor k=2 |" in printed and "held-out accuracy" in printed


def test_relaxed_demo_shows_the_counted_overhead(tmp_path, capsys):
    out = tmp_path / "demo_relaxed"
    assert main(["demo", "--out", str(out), "--max-steps", "2", "--relax-rank", "2"]) == 0
    summary = json.loads((out / "demo_summary.json").read_text())
    teacher, raptor = summary["rows"]
    overhead = summary["relaxation"]
    assert overhead["relax_rank"] == 2 and overhead["relax_params"] > 0 and 0 < overhead["relax_flops_fraction"] < 0.05
    adapters = adapter_flops(load_teacher("digits-vit").blocks[0], 2, ("qkv", "proj", "fc1", "fc2"), DIGITS_TOKENS,
                             DIGITS_DEPTH)
    assert overhead["relax_flops"] == adapters
    assert raptor["flops"] - teacher["flops"] == depth_scale_flops(DIGITS_DIM, DIGITS_DEPTH) + adapters
    assert from_pretrained(out).relax_rank == 2
    printed = capsys.readouterr().out
    assert "rank-2 adapters" in printed and f"+{overhead['relax_params']:,} parameters" in printed
