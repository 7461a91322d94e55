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


def test_phases_command_on_a_flat_folder_of_photos_and_the_api_on_paths(tmp_path):
    """Phase discovery takes what people have: a folder of unlabelled photos, or a list of their paths."""
    import numpy as np
    from PIL import Image

    from raptor_zoo.phases import discover
    from raptor_zoo.teachers import load_teacher

    photos = tmp_path / 'photos'
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(12):
        Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(photos / f'{index:02d}.png')
    out = tmp_path / 'phases_out'
    assert main(['phases', '--teacher', 'digits-vit', '--data', str(photos), '--k', '2', '--num-images', '12',
                 '--batch-size', '5', '--out', str(out)]) == 0
    from_folder = json.loads((out / 'phases.json').read_text())
    assert from_folder['num_images'] == 12
    from_paths = discover(load_teacher('digits-vit'), sorted(photos.iterdir()), k=2, batch_size=5, progress=False)
    assert from_paths.num_images == 12 and list(from_paths.block_schedule) == from_folder['block_schedule']
    np.testing.assert_allclose(from_paths.distance, np.array(from_folder['distance']), rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match='do not exist'):
        discover(load_teacher('digits-vit'), [photos / 'missing.png'], k=2, progress=False)
