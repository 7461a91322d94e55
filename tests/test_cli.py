"""The `raptor-zoo` command line, run in-process on the embedded teacher."""
import json

import pytest

from raptor_zoo.cli import main


def test_phases_command_on_embedded_teacher(tmp_path, capsys):
    out = tmp_path / 'phases_out'
    assert main(['phases', '--teacher', 'digits-vit', '--data', 'digits', '--k', '2',
                 '--num-images', '64', '--out', str(out)]) == 0
    result = json.loads((out / 'phases.json').read_text())
    assert result['teacher'] == 'digits-vit' and result['k'] == 2 and result['num_images'] == 64
    assert len(result['block_schedule']) == 2 and sum(result['block_schedule']) == 12
    assert [row['k'] for row in result['scores']] == list(range(1, 7))
    assert (out / 'phases.png').stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert 'block_schedule' in printed and 'phases.png' in printed


def test_phases_command_rejects_k_beyond_depth(tmp_path):
    with pytest.raises(SystemExit, match='out of range'):
        main(['phases', '--teacher', 'digits-vit', '--k', '13', '--out', str(tmp_path)])
