"""``raptor-zoo analyze``: every dynamical analysis on a Raptor and its teacher (or a teacher alone), JSON + PNGs.

    raptor-zoo analyze --model raptor-digits-k2 --data digits --out analysis_out

Its options are declared without torch in ``raptor_zoo_cli.options.add_analyze_arguments``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from .report import AnalysisConfig, analyze_models, save_analysis

__all__ = ["analyze_command", "load_models"]

KINDS = ("auto", "raptor", "teacher")


def _is_raptor_source(source: str) -> bool:
    from .. import zoo

    if zoo.is_zoo_name(source):
        return True
    config = Path(source).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        architecture = json.loads(config.read_text()).get("architecture", "")
    except (json.JSONDecodeError, AttributeError):
        return False
    return isinstance(architecture, str) and architecture.startswith("raptor")


def load_models(
        source: str,
        kind: str = "auto",
        teacher: str | None = None,
        pretrained: bool = True,
        img_size: int | None = None,
) -> dict[str, Any]:
    """``{"teacher": Teacher, "raptor": Raptor}`` for a Raptor source, ``{"teacher": Teacher}`` for a teacher source."""
    from ..hub import load_pretrained
    from ..teachers import load_teacher

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    if kind == "teacher" or (kind == "auto" and not _is_raptor_source(source)):
        if teacher is not None:
            raise ValueError(f"--teacher applies to a Raptor; {source!r} is analysed as a teacher (--kind raptor "
                             "if it is a Raptor).")
        return {"teacher": load_teacher(source, pretrained=pretrained, img_size=img_size)}
    raptor = load_pretrained(source)
    teacher_name = teacher or raptor.raptor_meta.get("teacher")
    if not teacher_name:
        raise ValueError(f"{source!r} records no teacher in its config.json; pass --teacher <name or folder>.")
    loaded = load_teacher(teacher_name, pretrained=pretrained, img_size=img_size)
    if loaded.depth != raptor.depth:
        raise ValueError(f"Teacher {teacher_name!r} has depth {loaded.depth} but the Raptor {source!r} unrolls "
                         f"{raptor.depth} steps; pass the right --teacher.")
    return {"teacher": loaded, "raptor": raptor.eval()}


def _load_images(data: str, split: str, data_config: dict, num_images: int, batch_size: int, device: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data import create_loader, load_image_dataset, random_subset

    dataset, _ = random_subset(load_image_dataset(data, split=split), num_images)
    loader = create_loader(dataset, data_config, batch_size=batch_size, is_training=False)
    images, labels = [], []
    for batch_images, batch_labels in loader:
        images.append(batch_images)
        labels.append(batch_labels)
    if not images:
        raise ValueError(f"--data {data!r} split {split!r} yielded no images.")
    return torch.cat(images).to(device), torch.cat(labels)


def analyze_command(args: argparse.Namespace) -> int:
    """Load the model(s) and images, run :func:`analyze_models`, write JSON + PNGs to ``--out``."""
    if args.num_images < 2:
        raise SystemExit(f"--num-images must be >= 2, got {args.num_images}.")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {args.batch_size}.")
    try:
        config = AnalysisConfig(start_layers=args.start_layers, scales=tuple(args.scales),
                                perturbation=args.perturbation, k=args.k, angular_updates=args.angular_updates,
                                seed=args.seed)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    started = time.perf_counter()
    models = load_models(args.model, args.kind, args.teacher, pretrained=not args.random_init, img_size=args.img_size)
    depth = models["teacher"].depth
    if args.start_layers and not all(0 <= s < depth for s in args.start_layers):
        raise SystemExit(f"--start-layers {args.start_layers} must lie in 0..{depth - 1} (depth {depth}).")
    if args.k is not None and not 1 <= args.k <= depth:
        raise SystemExit(f"--k {args.k} is out of range; use 1 <= k <= {depth}.")
    models = {label: model.to(args.device) for label, model in models.items()}
    images, labels = _load_images(args.data, args.split, models["teacher"].data_config, args.num_images,
                                  args.batch_size, args.device)
    with torch.no_grad():
        results = analyze_models(models, images, labels.numpy(), config)
    results["model"] = args.model
    results["teacher"] = models["teacher"].name
    results["data"] = {"source": args.data, "split": args.split}
    paths = save_analysis(results, args.out, title=Path(args.model).name)
    elapsed = time.perf_counter() - started
    for label, result in results["models"].items():
        dynamics = result["token_dynamics"]
        ranks = result["update_ranks"]
        line = (f"{label}: speed (deg) patches mean {dynamics['angular_speed']['patches'].mean() * 57.2958:.2f}, "
                f"final patch coherence {dynamics['patch_coherence'][-1]:.3f}, "
                f"stable rank of patch updates at L {ranks['stable_rank']['patches'][-1]:.2f}")
        if "basin_map" in result:
            contraction = result["basin_map"]["contraction"]["patches"]
            line += f", median patch contraction {float(torch.as_tensor(contraction).median()):.3f}"
        print(line)
    print(f"phase boundaries: {results['phase_boundaries']}")
    print(f"wrote {len(paths)} files to {args.out} in {elapsed:.1f} s: " + ", ".join(p.name for p in paths.values()))
    return 0
