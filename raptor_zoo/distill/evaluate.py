"""Fidelity of a free-running Raptor to its teacher: per-layer cosine and R², and head accuracy
(docs/design.md §5, §6).

For every layer 0..L the Raptor runs on its own outputs from its embedding (no teacher forcing) and is compared
with the teacher's trajectory:

* cosine similarity per token, averaged per token group (``cls``, ``registers``, ``patches``) and over ``all``;
* R² in the paper's form (docs/method.md §5.4): ``1 − mean((x − y)²) / (mean((x − mean(x))²) + 1e−6)`` with
  the Raptor's states as ``x``, the teacher's as ``y`` and one global scalar mean, and in the standard per-feature
  form (scikit-learn's ``r2_score(teacher, raptor)``, features = the D channels, averaged uniformly);
* a classifier head: the teacher's top-1 with its own head, the Raptor's top-1 with the teacher's head (final norm +
  head applied to the Raptor's last state), their ratio ("recovery", docs/design.md §6) and the top-1 agreement;
* an embedding head (CLIP / AIMv2 projection: no classes): the mean cosine of the Raptor's image embeddings to the
  teacher's (``embedding_cosine``); accuracy is never computed from an embedding.

Everything is accumulated in float64 from per-image statistics, so results do not depend on the batch size, and
are gathered with ``accelerator.gather_for_metrics`` when an accelerator is given (duplicates of an uneven last
batch dropped).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from .losses import token_group_slices

__all__ = ["evaluate_fidelity", "plot_fidelity", "fidelity_summary", "raptor_trajectory", "paper_r2"]

_R2_EPS = 1e-6


def paper_r2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The paper's R² (overcomplete ``r2_score``): ``1 − mean((x − y)²) / (mean((x − mean(x))²) + 1e−6)``.

    ``x`` is the prediction (the paper passes the Raptor's states first), ``y`` the reference; one global mean.
    """
    x, y = x.double(), y.double()
    return 1.0 - (x - y).pow(2).mean() / ((x - x.mean()).pow(2).mean() + _R2_EPS)


def raptor_trajectory(student: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The Raptor's free-running states ``x_0..x_L`` ``[B, L + 1, N, D]`` (before the final norm)."""
    x = student._embed(images)
    states = [x]
    for step in range(student.depth):
        x = student.forward_steps(x, step, step + 1)
        states.append(x)
    return torch.stack(states, dim=1)


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, Mapping):
        images = batch.get("pixel_values", batch.get("image"))
        labels = batch.get("labels", batch.get("label"))
    elif isinstance(batch, (tuple, list)):
        images, labels = batch[0], (batch[1] if len(batch) > 1 else None)
    else:
        images, labels = batch, None
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("Each batch must be images [B, C, H, W], an (images, labels) pair or a dict with pixel_values.")
    return images, labels


def _head_kind(teacher: nn.Module) -> str:
    """'classifier', 'embedding' (a projection to image embeddings: no classes) or 'none' (a Teacher says which)."""
    kind = getattr(teacher, "head_kind", None)
    if kind is not None:
        return kind
    return "classifier" if int(getattr(getattr(teacher, "model", teacher), "num_classes", 0) or 0) > 0 else "none"


def _batch_statistics(
        raptor: torch.Tensor,
        teacher: torch.Tensor,
        groups: dict[str, slice],
) -> dict[str, torch.Tensor]:
    """Per-image sums ``[B, L + 1, ...]`` from which every metric is computed after gathering."""
    x, y = raptor.double(), teacher.double()
    cosine = F.cosine_similarity(x, y, dim=-1, eps=1e-8)  # [B, L+1, N]
    stats = {f"cos_{name}": cosine[..., index].mean(dim=-1) for name, index in groups.items()}
    stats["cos_all"] = cosine.mean(dim=-1)
    error = (x - y).pow(2)
    stats["sse"] = error.sum(dim=(-2, -1))  # [B, L+1]
    stats["sum_x"] = x.sum(dim=(-2, -1))
    stats["sum_xx"] = x.pow(2).sum(dim=(-2, -1))
    stats["feature_sse"] = error.sum(dim=-2)  # [B, L+1, D]
    stats["feature_sum_y"] = y.sum(dim=-2)
    stats["feature_sum_yy"] = y.pow(2).sum(dim=-2)
    return stats


def _per_feature_r2(sse: torch.Tensor, sum_y: torch.Tensor, sum_yy: torch.Tensor, rows: int) -> float:
    """scikit-learn's uniform-average R² from per-feature sums (constant features: 1 if predicted exactly, else 0)."""
    total = sum_yy - sum_y.pow(2) / rows
    r2 = torch.where(total > 0, 1.0 - sse / total.clamp_min(1e-300), torch.where(sse == 0, 1.0, 0.0))
    return float(r2.mean())


@torch.no_grad()
def evaluate_fidelity(
        student: nn.Module,
        teacher: nn.Module,
        loader: Iterable[Any],
        max_batches: int | None = None,
        accelerator: Any = None,
        progress: bool = True,
) -> dict[str, Any]:
    """Per-layer fidelity (layers 0..L) of the free-running ``student`` to ``teacher``, plus head accuracy.

    ``loader`` yields normalised images, ``(images, labels)`` pairs or dicts with ``pixel_values``; accuracy
    needs labels (>= 0) and a teacher with a classifier. Returns a JSON-able dict: ``cosine`` and ``mean_cosine``
    (over layers 1..L) per token group, ``r2_paper`` / ``r2_per_feature`` per layer and over all layers
    (``*_all_layers``), and ``teacher_accuracy``, ``raptor_accuracy``, ``recovery``, ``agreement`` (None when
    not measurable).
    """
    if student.depth != teacher.depth:
        raise ValueError(f"student depth {student.depth} differs from teacher depth {teacher.depth}.")
    was_training = student.training
    student.eval()
    head_kind = _head_kind(teacher)
    totals: dict[str, torch.Tensor] = {}
    num_images = num_labelled = 0
    rows_per_image = None
    try:
        batches = tqdm(loader, desc="fidelity", unit="batch", total=max_batches,
                       disable=not progress or (accelerator is not None and not accelerator.is_local_main_process))
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            images, labels = _split_batch(batch)
            teacher_states = teacher.trajectory(images).float()
            raptor_states = raptor_trajectory(student, images).float()
            groups = token_group_slices(
                teacher_states.shape[-2], teacher.num_prefix_tokens, teacher.num_reg_tokens, teacher.has_class_token)
            rows_per_image = teacher_states.shape[-2]
            stats = _batch_statistics(raptor_states, teacher_states, groups)
            if head_kind == "embedding":
                stats["embed_cos"] = F.cosine_similarity(
                    teacher.forward_head_from_state(teacher_states[:, -1]).double(),
                    teacher.forward_head_from_state(raptor_states[:, -1]).double(), dim=-1)
            if head_kind == "classifier":
                teacher_pred = teacher.forward_head_from_state(teacher_states[:, -1]).argmax(dim=-1)
                raptor_pred = teacher.forward_head_from_state(raptor_states[:, -1]).argmax(dim=-1)
                stats["agree"] = (teacher_pred == raptor_pred).double()
                if labels is not None:
                    labels = labels.to(teacher_pred.device)
                    stats["labelled"] = (labels >= 0).double()
                    stats["teacher_correct"] = ((teacher_pred == labels) & (labels >= 0)).double()
                    stats["raptor_correct"] = ((raptor_pred == labels) & (labels >= 0)).double()
            if accelerator is not None:
                stats = accelerator.gather_for_metrics(stats)
            num_images += int(stats["sse"].shape[0])
            if "labelled" in stats:
                num_labelled += int(stats["labelled"].sum())
            for name, value in stats.items():
                total = value.sum(dim=0)
                totals[name] = totals[name] + total if name in totals else total
    finally:
        student.train(was_training)
    if num_images == 0:
        raise ValueError("The loader yielded no images to evaluate on.")

    num_layers = int(totals["sse"].shape[0])
    dim = int(totals["feature_sse"].shape[-1])
    group_names = [name[4:] for name in totals if name.startswith("cos_")]
    cosine = {name: (totals[f"cos_{name}"] / num_images).tolist() for name in group_names}
    elements = num_images * rows_per_image * dim
    mean_x = totals["sum_x"] / elements
    variance = totals["sum_xx"] / elements - mean_x.pow(2)
    r2_paper = (1.0 - (totals["sse"] / elements) / (variance + _R2_EPS)).tolist()
    all_elements = elements * num_layers
    all_mean = totals["sum_x"].sum() / all_elements
    all_variance = totals["sum_xx"].sum() / all_elements - all_mean.pow(2)
    r2_paper_all = float(1.0 - (totals["sse"].sum() / all_elements) / (all_variance + _R2_EPS))
    rows = num_images * rows_per_image
    r2_per_feature = [
        _per_feature_r2(totals["feature_sse"][layer], totals["feature_sum_y"][layer], totals["feature_sum_yy"][layer], rows)
        for layer in range(num_layers)]
    r2_per_feature_all = _per_feature_r2(
        totals["feature_sse"].sum(0), totals["feature_sum_y"].sum(0), totals["feature_sum_yy"].sum(0), rows * num_layers)

    metrics: dict[str, Any] = {
        "num_images": num_images,
        "layers": list(range(num_layers)),
        "cosine": cosine,
        "mean_cosine": {name: sum(values[1:]) / max(len(values) - 1, 1) for name, values in cosine.items()},
        "r2_paper": r2_paper,
        "r2_paper_all_layers": r2_paper_all,
        "r2_per_feature": r2_per_feature,
        "r2_per_feature_all_layers": r2_per_feature_all,
        "teacher_accuracy": None,
        "raptor_accuracy": None,
        "recovery": None,
        "agreement": float(totals["agree"] / num_images) if "agree" in totals else None,
        "head": head_kind,
        "embedding_cosine": float(totals["embed_cos"] / num_images) if "embed_cos" in totals else None,
        "num_labelled": num_labelled,
    }
    if num_labelled > 0:
        teacher_accuracy = float(totals["teacher_correct"] / num_labelled)
        raptor_accuracy = float(totals["raptor_correct"] / num_labelled)
        metrics.update(
            teacher_accuracy=teacher_accuracy,
            raptor_accuracy=raptor_accuracy,
            recovery=raptor_accuracy / teacher_accuracy if teacher_accuracy > 0 else None,
        )
    return metrics


def fidelity_summary(metrics: Mapping[str, Any]) -> str:
    """One line: mean cosine per group (layers 1..L), R² over all layers and, when measured, accuracy/recovery."""
    parts = [f"cos[{name}] {value:.4f}" for name, value in metrics["mean_cosine"].items()]
    parts.append(f"R2 paper {metrics['r2_paper_all_layers']:.4f}")
    parts.append(f"R2 per-feature {metrics['r2_per_feature_all_layers']:.4f}")
    if metrics.get("raptor_accuracy") is not None:
        parts.append(f"teacher acc {metrics['teacher_accuracy']:.4f}")
        parts.append(f"raptor acc {metrics['raptor_accuracy']:.4f}")
        if metrics.get("recovery") is not None:
            parts.append(f"recovery {metrics['recovery']:.4f}")
    if metrics.get("agreement") is not None:
        parts.append(f"agreement {metrics['agreement']:.4f}")
    if metrics.get("embedding_cosine") is not None:
        parts.append(f"image-embedding cosine {metrics['embedding_cosine']:.4f}")
    return ", ".join(parts)


def plot_fidelity(metrics: Mapping[str, Any], path: str | Path | None = None, title: str | None = None) -> Figure:
    """Per-layer cosine per token group (left) and R² in both forms (right); saved as PNG when ``path`` is given."""
    layers = metrics["layers"]
    figure = Figure(figsize=(10, 4), constrained_layout=True)
    cosine_axis, r2_axis = figure.subplots(1, 2)
    for name, values in metrics["cosine"].items():
        cosine_axis.plot(layers, values, marker="o", markersize=3, label=name)
    cosine_axis.set(xlabel="layer", ylabel="cosine(raptor, teacher)", title="per-layer cosine")
    cosine_axis.legend()
    r2_axis.plot(layers, metrics["r2_paper"], marker="o", markersize=3,
                 label=f"paper (all layers {metrics['r2_paper_all_layers']:.3f})")
    r2_axis.plot(layers, metrics["r2_per_feature"], marker="s", markersize=3,
                 label=f"per-feature (all layers {metrics['r2_per_feature_all_layers']:.3f})")
    r2_axis.set(xlabel="layer", ylabel="R²", title="per-layer R²")
    r2_axis.legend()
    for axis in (cosine_axis, r2_axis):
        axis.set_xticks(layers)
        axis.grid(alpha=0.3)
    if title is None and metrics.get("recovery") is not None:
        title = (f"teacher {metrics['teacher_accuracy']:.3f}, raptor {metrics['raptor_accuracy']:.3f} "
                 f"(recovery {metrics['recovery']:.3f})")
    if title:
        figure.suptitle(title)
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure
