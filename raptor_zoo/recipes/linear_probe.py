# Copyright 2026 The raptor_zoo developers. Licensed under the Apache License, Version 2.0.
"""The linear-probe recipe: its config (:class:`ProbeConfig`) and :func:`linear_probe_function`, launched by
`recipes/linear_probe.py` (the `accelerate launch` commands are in its docstring).

Linear probe of a frozen backbone (a Raptor or any teacher ViT) with Accelerate: the paper's DINOv2 protocol.
Features = concat(cls token, mean of the patch tokens) after the final norm, extracted once per split (optionally
cached as safetensors keyed by backbone + split + input size), then a linear classifier (AdamW, cosine) trained on
them; top-1 / top-5 on the held-out split. `--compare` probes the Raptor and its teacher (config.json `teacher`,
or `--teacher`) on the same split at one image size (`--img-size`; default the Raptor's own, the size its teacher
ran at when it was distilled) and reports the recovery ratio Raptor / teacher, the paper's headline number.

Output: --output-dir/linear_probe.json (and args.yaml).
"""
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from accelerate import Accelerator

from raptor_zoo.data import DataArgs, Splits, create_loader
from raptor_zoo.downstream import (
    LoadedBackbone,
    backbone_kind,
    cached_features,
    extract_features,
    feature_cache_path,
    load_backbone,
    topk_accuracy,
    train_linear_probe,
)
from raptor_zoo.training import command_line, save_run_config, start_run


@dataclass
class ProbeConfig(DataArgs):
    """Linear probe of a frozen Raptor or teacher (concat(cls, mean patch) features, linear head)."""
    backbone: str = field(default="raptor-digits-k2", metadata={
        "group": "Backbone", "help": "Raptor zoo name / folder / Hub repo, or any teacher load_teacher accepts"})
    backbone_kind: Literal["auto", "raptor", "teacher"] = field(default="auto", metadata={
        "group": "Backbone", "help": "auto: zoo names and Raptor folders are Raptors, the rest teachers"})
    compare: bool = field(default=False, metadata={
        "group": "Backbone", "help": "also probe the Raptor's teacher and report the recovery ratio"})
    teacher: str | None = field(default=None, metadata={
        "group": "Backbone", "help": "teacher for --compare; none = the Raptor's config.json 'teacher'"})
    teacher_pretrained: bool = field(default=True, metadata={
        "group": "Backbone", "help": "load teacher weights (--no-teacher-pretrained: random init, for tests)"})
    img_size: int | None = field(default=None, metadata={
        "group": "Backbone", "help": "image size every probed backbone runs at; none = the Raptor's own (its "
        "teacher's run size) for a Raptor and --compare, the teacher's default for a teacher"})
    teacher_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "group": "Backbone", "help": "extra timm.create_model arguments for a teacher, as a JSON object"})
    # data (beyond DataArgs': labels required)
    batch_size: int = field(default=64, metadata={"group": "Data", "help": "feature-extraction batch per process"})
    cache_dir: str | None = field(default=None, metadata={
        "group": "Data", "help": "cache features here as safetensors (backbone+split+size); none = no cache"})
    epochs: int = field(default=20, metadata={"group": "Probe", "help": "epochs of the linear head"})
    lr: float = field(default=1e-2, metadata={"group": "Probe", "help": "peak AdamW learning rate (cosine to 0)"})
    weight_decay: float = field(default=1e-4, metadata={"group": "Probe", "help": "AdamW weight decay"})
    probe_batch_size: int = field(default=256, metadata={"group": "Probe", "help": "batch of the head's training"})
    seed: int = field(default=0, metadata={"group": "Probe", "help": "seed of the head's init and order"})
    output_dir: str = field(default="outputs/linear_probe", metadata={"group": "Run", "help": "where results go"})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata={
        "group": "Run", "help": "autocast of the backbone during feature extraction"})
    cpu: bool = field(default=False, metadata={"group": "Run", "help": "run on CPU even if a GPU is present"})

    def __post_init__(self):
        super().__post_init__()
        for name in ("batch_size", "epochs", "probe_batch_size", "img_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")


def at_image_size(backbone: LoadedBackbone, img_size: int) -> LoadedBackbone:
    """The Raptor ``backbone`` probed at ``img_size``: its own size, or any size when built with dynamic_img_size."""
    size = (img_size, img_size)
    native = tuple(backbone.model.patch_embed.img_size)
    if size != native and not backbone.model.dynamic_img_size:
        raise ValueError(f"Raptor {backbone.name!r} runs at fixed size {native[0]}x{native[1]}; --img-size {img_size} "
                         f"needs a Raptor built with dynamic_img_size=True. Drop --img-size to probe at {native[0]}.")
    channels = backbone.data_config["input_size"][0]
    if size != native and backbone.image_processor is not None:
        raise ValueError(f"Raptor {backbone.name!r} prepares images with its teacher's image processor at "
                         f"{native[0]}x{native[1]}; --img-size {img_size} would bypass it. Drop --img-size.")
    return LoadedBackbone(backbone.model, dict(backbone.data_config, input_size=(channels, *size)), backbone.name,
                          backbone.kind, teacher=backbone.teacher, image_processor=backbone.image_processor)


def probe(config: ProbeConfig, backbone: LoadedBackbone, splits: Splits, accelerator: Accelerator) -> dict:
    """Extract (or load cached) features of both splits, train the head, top-1 / top-5 on the held-out split."""
    transform = backbone.transform
    model = backbone.model.to(accelerator.device)
    features = {}
    for split, dataset, subset in ((config.train_split, splits.train, splits.subsets["train"]),
                                   (config.eval_split, splits.eval, splits.subsets["eval"])):
        loader = accelerator.prepare_data_loader(create_loader(
            dataset, backbone.data_config, config.batch_size, is_training=False, num_workers=config.num_workers,
            transform=transform))

        def compute(loader=loader, split=split):
            with accelerator.autocast():
                return extract_features(model, loader, accelerator, desc=f"{backbone.label} {split}")

        path = feature_cache_path(config.cache_dir, backbone.name, config.dataset, split, backbone.data_config,
                                  subset) if config.cache_dir else None
        features[split] = cached_features(path, compute, write=accelerator.is_main_process)
        accelerator.wait_for_everyone()
    (train_x, train_y), (eval_x, eval_y) = features[config.train_split], features[config.eval_split]
    num_classes = splits.num_classes or int(max(train_y.max(), eval_y.max())) + 1
    head = train_linear_probe(train_x, train_y, num_classes, epochs=config.epochs, lr=config.lr,
                              weight_decay=config.weight_decay, batch_size=config.probe_batch_size, seed=config.seed,
                              progress=accelerator.is_local_main_process)
    with torch.no_grad():
        accuracy = topk_accuracy(head(eval_x), eval_y)
        train_accuracy = topk_accuracy(head(train_x), train_y, ks=(1,))["top1"]
    model.cpu()
    return {"backbone": backbone.name, "label": backbone.label, "kind": backbone.kind, **accuracy, "train_top1": train_accuracy,
            "num_features": train_x.shape[1], "num_classes": num_classes, "num_train_images": len(train_y),
            "num_eval_images": len(eval_y), "input_size": list(backbone.data_config["input_size"])}


def linear_probe_function(config: ProbeConfig) -> dict:
    accelerator, output_dir = start_run(config, seedable_data=False, write_config=False)
    splits = config.load_splits()
    kind = backbone_kind(config.backbone) if config.backbone_kind == "auto" else config.backbone_kind
    if kind == "teacher":
        backbone = load_backbone(config.backbone, kind=kind, pretrained=config.teacher_pretrained,
                                 img_size=config.img_size, **config.teacher_kwargs)
    else:
        backbone = load_backbone(config.backbone, kind=kind)
        backbone = at_image_size(backbone, config.img_size or backbone.model.patch_embed.img_size[0])
    teacher = None
    if config.compare:
        if backbone.kind != "raptor":
            raise ValueError(f"--compare probes a Raptor against its teacher, but --backbone {config.backbone!r} is a "
                             "teacher; pass a Raptor (zoo name or folder), or --backbone-kind raptor.")
        teacher_id = config.teacher or backbone.teacher
        if teacher_id is None:
            raise ValueError(f"Raptor {config.backbone!r} records no teacher in its config.json; pass --teacher.")
        try:  # at the Raptor's probe size: a recovery ratio compares both at one size
            teacher = load_backbone(teacher_id, kind="teacher", pretrained=config.teacher_pretrained,
                                    img_size=backbone.data_config["input_size"][-1], **config.teacher_kwargs)
        except (ValueError, FileNotFoundError) as err:
            if config.teacher:
                raise
            raise ValueError(f"Raptor {config.backbone!r} records teacher {teacher_id!r}, which does not load here "
                             f"(a local folder is recorded by name, not path); pass --teacher <its folder or id>.\n"
                             f"{type(err).__name__}: {err}") from err
    save_run_config(accelerator, config)

    result: dict[str, Any] = {"command": command_line(), "dataset": config.dataset, "eval_split": config.eval_split,
                              "subsets": splits.subsets,
                              "raptor" if backbone.kind == "raptor" else "backbone":
                                  probe(config, backbone, splits, accelerator)}
    rows = [("backbone", result.get("raptor") or result["backbone"])]
    if teacher is not None:
        result["teacher"] = probe(config, teacher, splits, accelerator)
        result["image_size"] = "x".join(map(str, backbone.data_config["input_size"][1:]))
        result["recovery"] = {k: result["raptor"][k] / result["teacher"][k] if result["teacher"][k] > 0 else None
                              for k in ("top1", "top5")}
        rows = [("raptor", result["raptor"]), ("teacher", result["teacher"])]
    lines = [f"{'':8} {'name':40} {'size':>9} {'top-1':>7} {'top-5':>7}"]
    lines += [f"{role:8} {entry['label'][:40]:40} {'x'.join(map(str, entry['input_size'][1:])):>9} "
              f"{entry['top1']:7.4f} {entry['top5']:7.4f}" for role, entry in rows]
    if "recovery" in result:
        recovery = result["recovery"]
        lines.append(f"{'recovery':8} {'Raptor / teacher, both at ' + result['image_size']:50} " + " ".join(
            f"{value:7.4f}" if value is not None else f"{'n/a':>7}" for value in (recovery["top1"], recovery["top5"])))
    accelerator.print("\n".join(lines))
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "linear_probe.json").write_text(json.dumps(result, indent=2) + "\n")
        accelerator.print(f"wrote {output_dir / 'linear_probe.json'}")
    accelerator.end_training()
    return result
