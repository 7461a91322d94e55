"""The models shipped in the package load offline and score what their cards say."""
import json
from importlib import resources

import torch

import raptor_zoo
from raptor_zoo.data import create_loader, load_digits_split
from raptor_zoo.teachers import load_teacher


def _held_out_accuracy(model, data_config) -> float:
    loader = create_loader(load_digits_split("test"), data_config, batch_size=120, is_training=False)
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += (model(images).argmax(-1) == labels).sum().item()
            total += labels.numel()
    return correct / total


def test_raptor_digits_k2_loads_offline_and_matches_its_metrics():
    model = raptor_zoo.from_pretrained("raptor-digits-k2").eval()
    teacher = load_teacher("digits-vit")
    assert model.num_unique_blocks == 2 and sum(model.block_schedule) == teacher.depth
    metrics = json.loads(resources.files("raptor_zoo.assets").joinpath("raptor-digits-k2/metrics.json").read_text())
    raptor_accuracy = _held_out_accuracy(model, teacher.data_config)
    teacher_accuracy = _held_out_accuracy(teacher, teacher.data_config)
    assert raptor_accuracy == metrics["raptor_accuracy"] and teacher_accuracy == metrics["teacher_accuracy"]
    assert raptor_accuracy / teacher_accuracy >= 0.98
