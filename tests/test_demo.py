"""`raptor-zoo demo` end to end on a tiny budget: teacher -> phases -> distil -> evaluate -> save -> table."""
import json

from raptor_zoo import from_pretrained
from raptor_zoo.cli import main


def test_demo_writes_a_loadable_raptor_and_the_table(tmp_path, capsys):
    out = tmp_path / 'demo_out'
    assert main(['demo', '--out', str(out), '--max-steps', '3']) == 0
    for name in ('model.safetensors', 'config.json', 'README.md', 'phase_heatmap.png', 'fidelity.png',
                 'demo_summary.json', 'demo_summary.md'):
        assert (out / name).is_file(), name
    summary = json.loads((out / 'demo_summary.json').read_text())
    teacher, raptor = summary['rows']
    assert teacher['flops'] > 0 and abs(raptor['flops'] / teacher['flops'] - 1) < 0.005  # teacher block type
    assert raptor['params'] < teacher['params'] / 4
    assert 0 < raptor['accuracy'] <= 1 and raptor['accuracy_ratio'] == raptor['accuracy'] / teacher['accuracy']
    model = from_pretrained(out)
    assert model.num_unique_blocks == 2 and len(model.blocks) == sum(model.block_schedule) and list(model.block_schedule) == summary['block_schedule']
    printed = capsys.readouterr().out
    assert '| Raptor k=2 |' in printed and 'held-out accuracy' in printed


def test_relaxed_demo_shows_the_counted_overhead(tmp_path, capsys):
    out = tmp_path / 'demo_relaxed'
    assert main(['demo', '--out', str(out), '--max-steps', '2', '--relax-rank', '2']) == 0
    summary = json.loads((out / 'demo_summary.json').read_text())
    teacher, raptor = summary['rows']
    overhead = summary['relaxation']
    assert overhead['relax_rank'] == 2 and overhead['relax_params'] > 0 and 0 < overhead['relax_flops_fraction'] < 0.05
    assert raptor['flops'] > teacher['flops'] * (1 + overhead['relax_flops_fraction'] / 2)
    assert from_pretrained(out).relax_rank == 2
    printed = capsys.readouterr().out
    assert 'rank-2 adapters' in printed and f"+{overhead['relax_params']:,} parameters" in printed
