# Copyright 2026 The raptor_zoo developers. Licensed under the Apache License, Version 2.0.
"""Raptor as a backbone: the linear-probe protocol, fine-tuning helpers (layer-wise LR decay over a block
schedule, freezing) and top-k accuracy. `recipes/linear_probe.py` and `recipes/finetune.py` call these.

Linear probe (the paper's DINOv2 protocol): frozen backbone, features = concat(cls token, mean of the patch
tokens) of the final-normed last state, a linear classifier trained on them.

Layer-wise LR decay with shared blocks: the unrolled depth of a Raptor is L = sum(block_schedule); unique block j
is applied at steps first_step(j) .. first_step(j) + n_j - 1. Its LR scale follows the depth of its FIRST
application: it gets the scale timm gives teacher block first_step(j), ``layer_decay ** (L - first_step(j))``
(stem ``layer_decay ** (L + 1)``, final norm ``layer_decay`` as timm's last block, head 1), so a Raptor whose
schedule is all ones gets exactly timm's scales for a ViT of depth L.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .data import ProcessorTransform, build_transform
from .models.raptor_vit import cls_avg_pool

__all__ = [
    "BackboneKind", "LoadedBackbone", "LinearProbe", "backbone_kind", "load_backbone", "probe_features",
    "extract_features", "cached_features", "feature_cache_path", "train_linear_probe", "topk_accuracy",
    "evaluate_classifier", "raptor_layer_ids", "layer_decay_param_groups", "create_finetune_optimizer",
    "freeze_for_finetuning", "teacher_of", "SeededTransformDataset",
]

BackboneKind = Literal["auto", "raptor", "teacher"]


# ------------------------------------------------------------------------------------------ backbones

class LoadedBackbone:
    """A frozen feature extractor: ``model`` (a timm ViT: a Raptor or a teacher's model), its data_config, name."""

    def __init__(self, model: nn.Module, data_config: dict[str, Any], name: str, kind: str,
                 teacher: str | None = None, image_processor: Any = None):
        self.model = model.eval().requires_grad_(False)
        self.image_processor = image_processor if image_processor is not None \
            else getattr(model, "image_processor", None)
        self.data_config = dict(data_config, input_size=tuple(data_config["input_size"]))
        self.name = name
        self.kind = kind
        self.teacher = teacher

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> normalised tensor as the backbone's own preprocessing: its transformers image processor when
        it carries one (a transformers teacher's, or a Raptor saved with its teacher's), else timm's eval
        transform of the data config."""
        if self.image_processor is not None:
            return ProcessorTransform(self.image_processor)
        return build_transform(self.data_config, is_training=False)

    @property
    def label(self) -> str:
        """The name to show in progress bars and tables: a local folder by its own name, not its path."""
        return Path(self.name).name if Path(self.name).exists() else self.name

    def __repr__(self) -> str:
        return f"LoadedBackbone(name={self.name!r}, kind={self.kind!r}, input_size={self.data_config['input_size']})"


def _zoo_names() -> set[str]:
    from .zoo import list_models

    names = set()
    for entry in list_models():
        names.add(entry["name"])
        names.update(entry.get("aliases", ()))
    return names


def _folder_config(source: str) -> dict[str, Any] | None:
    path = Path(source).expanduser() / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def backbone_kind(source: str | os.PathLike) -> Literal["raptor", "teacher"]:
    """'raptor' for a zoo name or a folder whose config.json is a Raptor's (model_type 'raptor'); else 'teacher'.

    Hub repo ids of Raptors are not looked up (no network here): pass ``kind='raptor'`` for them.
    """
    source = os.fspath(source)
    if source in _zoo_names():
        return "raptor"
    config = _folder_config(source)
    if config is not None and (config.get("model_type") == "raptor" or "block_schedule" in config):
        return "raptor"
    return "teacher"


def teacher_of(source: str | os.PathLike) -> str | None:
    """The teacher id a Raptor folder or zoo name records (config.json ``teacher``), or None."""
    source = os.fspath(source)
    config = _folder_config(source)
    if config is not None:
        return config.get("teacher")
    from .zoo import list_models

    for entry in list_models():
        if source == entry["name"] or source in entry.get("aliases", ()):
            return entry.get("teacher")
    return None


def load_backbone(
        source: str | os.PathLike,
        kind: BackboneKind = "auto",
        pretrained: bool = True,
        img_size: int | None = None,
        **kwargs: Any,
) -> LoadedBackbone:
    """A frozen backbone: a Raptor (``raptor_zoo.from_pretrained``) or any teacher (``raptor_zoo.load_teacher``).

    ``kind='auto'`` decides with :func:`backbone_kind`. The data config is the teacher's ``data_config`` or the
    Raptor's ``pretrained_cfg`` through ``timm.data.resolve_data_config``. ``pretrained`` / ``img_size`` /
    ``kwargs`` go to ``load_teacher`` (teachers only).
    """
    from timm.data import resolve_data_config

    from .hub import load_pretrained
    from .teachers import load_teacher

    if kind not in ("auto", "raptor", "teacher"):
        raise ValueError(f"kind must be 'auto', 'raptor' or 'teacher', got {kind!r}.")
    source = os.fspath(source)
    kind = backbone_kind(source) if kind == "auto" else kind
    if kind == "raptor":
        if kwargs or img_size is not None:
            raise TypeError(f"img_size / extra arguments {sorted(kwargs)} apply to teachers, not to Raptor {source!r}.")
        model = load_pretrained(source)
        teacher = model.raptor_meta.get("teacher") or teacher_of(source)
        return LoadedBackbone(model, resolve_data_config({}, model=model), source, "raptor", teacher=teacher)
    teacher = load_teacher(source, pretrained=pretrained, img_size=img_size, **kwargs)
    return LoadedBackbone(teacher.model, teacher.data_config, teacher.name, "teacher",
                          image_processor=teacher.image_processor)


# ------------------------------------------------------------------------------------------ features

def probe_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Linear-probe features ``[B, 2D]``: concat(cls token, mean patch token) of ``forward_features`` (final norm)."""
    if not getattr(model, "has_class_token", False):
        raise ValueError(
            f"{type(model).__name__} has no class token; the probe protocol needs concat(cls, patch mean).")
    tokens = model.forward_features(images)
    return cls_avg_pool(tokens, model.num_prefix_tokens)


@torch.no_grad()
def extract_features(
        model: nn.Module,
        loader: Iterable,
        accelerator: Any = None,
        desc: str = "features",
        max_batches: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, 2D] float32 on CPU, labels [N]) of every batch of ``loader`` (gathered across processes)."""
    model.eval()
    features, labels = [], []
    disable = accelerator is not None and not accelerator.is_local_main_process
    for index, (images, targets) in enumerate(tqdm(loader, desc=desc, disable=disable)):
        if max_batches is not None and index >= max_batches:
            break
        if accelerator is not None:
            images, targets = images.to(accelerator.device), targets.to(accelerator.device)
            batch = probe_features(model, images).float()
            batch, targets = accelerator.gather_for_metrics((batch, targets))
        else:
            batch = probe_features(model, images).float()
        features.append(batch.cpu())
        labels.append(targets.cpu())
    if not features:
        raise ValueError("The loader yielded no batch; check the dataset split and the batch size.")
    return torch.cat(features), torch.cat(labels)


def feature_cache_path(cache_dir: str | os.PathLike, backbone: str, dataset: str, split: str,
                       data_config: dict[str, Any], subset: dict[str, Any] | None = None) -> Path:
    """``cache_dir/<backbone>__<dataset>__<split>__<size>__<subset>.safetensors``: one file per backbone, data and
    subset (``all``, or the count and seed of a :func:`raptor_zoo.data.random_subset` record)."""
    def safe(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_")

    size = "x".join(str(n) for n in data_config["input_size"][1:])
    taken = "all" if subset is None or subset.get("method") == "all" else f"n{subset['count']}-seed{subset['seed']}"
    return Path(cache_dir) / f"{safe(backbone)}__{safe(dataset)}__{safe(split)}__{size}__{taken}.safetensors"


def cached_features(path: Path | None, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                    write: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels from the safetensors file ``path`` when it exists, else ``compute()`` (then saved there
    when ``write``: only the main process writes)."""
    if path is not None and path.is_file():
        tensors = load_file(str(path))
        return tensors["features"], tensors["labels"]
    features, labels = compute()
    if path is not None and write:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        save_file({"features": features.contiguous(), "labels": labels.contiguous()}, str(temporary))
        temporary.replace(path)
    return features, labels


# ------------------------------------------------------------------------------------------ linear probe

class LinearProbe(nn.Module):
    """A linear classifier on features standardised with the training set's mean and std (fixed buffers)."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.head = nn.Linear(num_features, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head((features - self.mean) / self.std)


def train_linear_probe(
        features: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int | None = None,
        epochs: int = 10,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = True,
) -> LinearProbe:
    """Train a :class:`LinearProbe` on fixed features: AdamW, cosine decay per step to 0, cross-entropy."""
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"Expected features [N, F] and labels [N], got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}.")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}.")
    labels = labels.long()
    if labels.min() < 0:
        raise ValueError("Labels must be class indices >= 0; the probe needs a labelled split.")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    probe = LinearProbe(features.shape[1], num_classes)
    probe.mean.copy_(features.mean(0))
    probe.std.copy_(features.std(0).clamp_min(1e-6))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(features) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="linear probe", disable=not progress):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(probe(features[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return probe.eval()


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` fractions; k is capped at the number of classes."""
    if len(labels) == 0:
        raise ValueError("topk_accuracy needs at least one example.")
    result = {}
    for k in ks:
        top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
        result[f"top{k}"] = (top == labels.reshape(-1, 1)).any(dim=-1).float().mean().item()
    return result


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: Iterable, accelerator: Any = None, desc: str = "eval",
                        max_batches: int | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean cross-entropy of ``model`` (images -> logits) on ``loader``."""
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    disable = accelerator is None or not accelerator.is_local_main_process
    for index, (images, labels) in enumerate(tqdm(loader, desc=desc, disable=disable, leave=False)):
        if max_batches is not None and index >= max_batches:
            break
        logits = model(images).float()
        if accelerator is not None:
            logits, labels = accelerator.gather_for_metrics((logits, labels))
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    model.train(was_training)
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    return {**topk_accuracy(logits, labels), "loss": F.cross_entropy(logits, labels).item(), "num_images": len(labels)}


# ------------------------------------------------------------------------------------------ fine-tuning

class SeededTransformDataset(torch.utils.data.Dataset):
    """``(transform(image), label)`` with the random augmentation of example i in epoch e seeded by (seed, e, i).

    The augmentation no longer depends on the global RNG stream, so it is the same whatever the number of
    workers, and a run resumed mid-epoch (accelerate's loaders fetch one batch ahead of the checkpoint) sees
    exactly the views an uninterrupted run sees. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, dataset: Any, transform: Callable[[Any], torch.Tensor], seed: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        example = self.dataset[index]
        sample_seed = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + index
        python_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                random.seed(sample_seed)
                image = self.transform(example["image"].convert("RGB"))
        finally:
            random.setstate(python_state)
        return image, int(example["label"])


def _is_raptor(model: nn.Module) -> bool:
    return hasattr(model, "block_schedule") and hasattr(model, "step_block_indices")


def raptor_layer_ids(model: nn.Module) -> dict[str, int]:
    """Parameter name -> layer id on the unrolled depth L of a Raptor (the layer-decay rule for shared blocks).

    Stem (patch_embed, cls/register tokens, pos_embed, norm_pre) 0; unique block j ``1 + first_step(j)``, where
    first_step(j) is the 0-based step of its first application; a relaxed Raptor's adapters of step l
    (``relax.{l}``) ``1 + l``, the id of the layer they belong to; final ``norm`` L (timm groups it with the last
    block); everything else (fc_norm, head) L + 1. For a schedule of all ones this is timm's ``group_matcher``
    grouping of a ViT of depth L (``param_groups_layer_decay``).
    """
    if not _is_raptor(model):
        raise TypeError(f"raptor_layer_ids needs a Raptor (any raptor_zoo.RaptorMixin model), got {type(model).__name__}.")
    first_step = {}
    for step, block in enumerate(model.step_block_indices):
        first_step.setdefault(block, step)
    depth = len(model.step_block_indices)
    stem = re.compile(r"^(cls_token|reg_token|pos_embed|patch_embed|norm_pre)")
    block = re.compile(r"^blocks\.(\d+)\.")
    adapter = re.compile(r"^relax\.(\d+)\.")
    layer_ids = {}
    for name, _ in model.named_parameters():
        if stem.match(name):
            layer_ids[name] = 0
        elif match := block.match(name):
            layer_ids[name] = 1 + first_step[int(match.group(1))]
        elif match := adapter.match(name):
            layer_ids[name] = 1 + int(match.group(1))
        elif name.startswith("norm."):
            layer_ids[name] = depth
        else:
            layer_ids[name] = depth + 1
    return layer_ids


def layer_decay_param_groups(
        model: nn.Module,
        weight_decay: float = 0.05,
        layer_decay: float = 0.75,
        min_scale: float = 0.0,
        no_weight_decay_list: Sequence[str] = (),
        layer_ids: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """timm-style parameter groups (``lr_scale``, ``weight_decay``) from a name -> layer id mapping.

    ``layer_ids`` defaults to :func:`raptor_layer_ids`; the scale of layer i is
    ``max(min_scale, layer_decay ** (max_id - i))``. 1-D parameters and ``model.no_weight_decay()`` names get no
    weight decay, as timm's ``param_groups_layer_decay``. Pass as ``create_optimizer_v2(param_group_fn=...)``.
    """
    layer_ids = raptor_layer_ids(model) if layer_ids is None else layer_ids
    skip = set(no_weight_decay_list)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    layer_max = max(layer_ids.values())
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer_id = layer_ids[name]
        no_decay = param.ndim <= 1 or name in skip
        key = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {"lr_scale": max(min_scale, layer_decay ** (layer_max - layer_id)),
                           "weight_decay": 0.0 if no_decay else weight_decay, "params": [], "param_names": []}
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def create_finetune_optimizer(
        model: nn.Module,
        opt: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        layer_decay: float | None = None,
        layer_decay_min_scale: float = 0.0,
        **kwargs: Any,
) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2``; with ``layer_decay`` on a Raptor, its groups follow the first-application
    rule (:func:`layer_decay_param_groups`), on any other timm model timm's own ``group_matcher`` grouping."""
    from timm.optim import create_optimizer_v2

    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must lie in (0, 1], got {layer_decay}.")
    if layer_decay is not None and _is_raptor(model):
        def param_group_fn(module: nn.Module) -> list[dict[str, Any]]:
            groups = layer_decay_param_groups(module, weight_decay, layer_decay, layer_decay_min_scale)
            for group in groups:
                group.pop("param_names")
            return groups

        return create_optimizer_v2(model, opt, lr=lr, weight_decay=weight_decay, param_group_fn=param_group_fn,
                                   **kwargs)
    return create_optimizer_v2(model, opt, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay,
                               layer_decay_min_scale=layer_decay_min_scale, **kwargs)


def freeze_for_finetuning(model: nn.Module, freeze_blocks: int = 0, train_head_only: bool = False) -> list[str]:
    """Freeze parameters in place; returns the names left trainable.

    ``train_head_only``: only the classifier (``model.get_classifier()``) trains. ``freeze_blocks`` = n > 0: the
    stem and the first n blocks of ``model.blocks`` are frozen; for a Raptor these are the first n UNIQUE blocks,
    so every application of a frozen block is frozen.
    """
    blocks = getattr(model, "blocks", None)
    num_blocks = 0 if blocks is None else getattr(model, "num_unique_blocks", len(blocks))
    if freeze_blocks < 0:
        raise ValueError(f"--freeze-blocks must be >= 0, got {freeze_blocks}.")
    if freeze_blocks and (blocks is None or freeze_blocks > num_blocks):
        found = "no blocks" if blocks is None else f"{num_blocks} (unique) blocks"
        raise ValueError(f"--freeze-blocks {freeze_blocks} exceeds the model's {found}; use 0..{num_blocks}.")
    if train_head_only:
        model.requires_grad_(False)
        model.get_classifier().requires_grad_(True)
    elif freeze_blocks:
        stem = re.compile(r"^(cls_token|reg_token|pos_embed|patch_embed|norm_pre)")
        block = re.compile(r"^blocks\.(\d+)\.")
        for name, param in model.named_parameters():
            match = block.match(name)
            if stem.match(name) or (match and int(match.group(1)) < freeze_blocks):
                param.requires_grad_(False)
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    if not trainable:
        raise ValueError("Nothing left to train: the model has no classifier head (num_classes=0) to train.")
    return trainable
