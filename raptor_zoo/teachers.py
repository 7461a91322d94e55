"""Teachers: frozen Vision Transformers seen through one interface, the trajectory of their token states.

A :class:`Teacher` wraps a timm model of any family a Raptor can be built from (``models/families.py``: ViT and
DeiT, Eva / DINOv3 / EVA-02, BEiT, NaFlexViT, XCiT, CaiT, SAM, ...) and exposes what the rest of raptor_zoo needs: the embedding ``x_0``, the L blocks, the
trajectory ``x_0..x_L`` (raw block outputs, before the final norm), the final norm + head, the token layout
(class token, registers, patches) and the timm-style ``data_config`` used to normalise images.

:func:`load_teacher` accepts

* a timm model name (``vit_small_patch14_reg4_dinov2``, ``deit_tiny_patch16_224``, ...), an ``hf-hub:org/name``
  or ``local-dir:/path`` string, or a timm ViT module;
* a Hugging Face transformers vision encoder of a type in ``raptor_zoo.hf_convert.HF_CONVERTERS`` (DINOv2,
  ViT, ... and their ``*ForImageClassification`` wrappers) as a module, a saved folder or a Hub repo id. It is
  converted into a timm model of a supported family with identical numerics (:mod:`raptor_zoo.hf_convert`);
* the embedded digits teacher, ``"digits-vit"`` (:data:`EMBEDDED_TEACHERS`).

Images given to every method are *normalised* tensors ``[B, C, H, W]``; normalise once with ``data_config``.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
from torch import nn

from .data import ProcessorTransform, build_transform
from .hf_convert import HF_CONVERTERS, describe_for_timm, hf_converter, hf_model_class, hf_model_type, is_hf_teacher
from .hf_convert.vit import (
    DINOV2_IMG_SIZE,
    DINOV2_STORED_IMG_SIZE,
    HF_VIT_MODEL_TYPES,
    ClsAvgVisionTransformer,
    convert_hf_vit,
    dinov2_data_config,
    dinov2_run_size,
    hf_state_dict_to_timm,
    set_vit_run_size,
    vit_config_from_hf,
)
from .models.families import (
    FAMILIES,
    accepts_any_img_size,
    family_of,
    in_chans_of,
    native_img_size,
    pair,
    patch_size_of,
)
from .models.raptor_base import RaptorMixin

__all__ = [
    "EMBEDDED_TEACHERS",
    "HF_VIT_MODEL_TYPES",
    "DINOV2_IMG_SIZE",
    "DINOV2_STORED_IMG_SIZE",
    "ClsAvgVisionTransformer",
    "Teacher",
    "load_teacher",
    "vit_config_from_hf",
    "hf_state_dict_to_timm",
    "convert_hf_vit",
    "data_config_from_processor",
]

EMBEDDED_TEACHERS: dict[str, str] = {"digits-vit": "vit_digits_patch8_reg4.digits"}
"""Teachers shipped inside the package: name -> timm ``arch.tag`` (weights are package data)."""

_TEACHER_SOURCES = ("timm", "hf", "embedded", "module")
_COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
# timm.create_model kwargs about where weights come from (left out of the meta-device architecture check)
_TIMM_LOADING_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")
_ACCEPTED = (
    "a timm ViT name (e.g. 'vit_small_patch14_reg4_dinov2'), an 'hf-hub:org/name' or 'local-dir:/path' timm id, "
    f"an embedded teacher ({', '.join(repr(n) for n in EMBEDDED_TEACHERS)}), a folder or Hub repo id holding a "
    f"transformers model of type {', '.join(sorted(HF_CONVERTERS))}, a timm ViT module of a supported family (vit, "
    "deit, eva: EVA-02 / DINOv3 / PE, beit, relpos, sam, naflexvit, xcit, cait), "
    "a transformers module of one of those types, or a Teacher"
)



def _is_dinov2_name(name: str | None) -> bool:
    return name is not None and "dinov2" in name.lower()


class _StopForward(Exception):
    """Ends a teacher forward once the last requested state is recorded."""


class Teacher(nn.Module):
    """A frozen timm ViT of any supported family with a uniform trajectory interface.

    Always in eval mode with ``requires_grad=False`` on every parameter. ``trajectory`` returns the
    L + 1 token states ``x_0..x_L``: state 0 is the embedding output (what the family's ``forward_features``
    feeds to the first block), state l the raw output of block l, before the final norm — recorded on the
    family's own forward, so RoPE, relative-position biases and masks are the family's. Tokens are laid
    out as timm does: class token (if any), then registers, then patches in row-major order (CaiT and XCiT
    add their class token after the block stack, so their states hold patches only; SAM's [B, H, W, D]
    states are flattened to tokens).
    """

    model: nn.Module

    def __init__(
            self,
            model: nn.Module,
            *,
            name: str | None = None,
            source: str = "module",
            revision: str | None = None,
            img_size: int | tuple[int, int] | None = None,
            data_config: Mapping[str, Any] | None = None,
            image_processor: Any = None,
    ) -> None:
        """Wrap ``model`` (validated: a timm ViT of a family in ``raptor_zoo.models.families``).

        Args:
            model: the timm ViT; it is put in eval mode and frozen in place.
            name: the id it was loaded from (a local folder: 'architecture (folder name)', never its path);
                defaults to the module's class name.
            source: one of "timm", "hf", "embedded", "module".
            revision: Hub revision / commit when known.
            img_size: the size this package runs it at; defaults to the model's own. A different size
                needs a model built with ``dynamic_img_size=True``.
            data_config: timm-style preprocessing dict; defaults to ``timm.data.resolve_data_config``
                (the DINOv2 protocol for DINOv2 models) at ``img_size``.
            image_processor: the teacher's own transformers image processor (a transformers teacher saved with
                one); :attr:`eval_transform` then runs it, pixel for pixel.
        """
        super().__init__()
        _check_timm_vit(model)
        if source not in _TEACHER_SOURCES:
            raise ValueError(f"source must be one of {_TEACHER_SOURCES}; got {source!r}.")
        self.family = family_of(model)
        native_size = native_img_size(model)
        run_size = native_size if img_size is None else pair(img_size)
        if run_size != native_size and not accepts_any_img_size(model):
            raise ValueError(
                f"{type(model).__name__} runs at fixed size {native_size} but img_size={run_size} was asked; "
                "create it with dynamic_img_size=True (timm.create_model(..., dynamic_img_size=True)) or with "
                f"img_size={run_size}."
            )
        patch_size = patch_size_of(model)
        if patch_size[0] != patch_size[1]:
            raise ValueError(f"Only square patches are supported; the model has patch_size={patch_size}.")

        self.model = model.eval().requires_grad_(False)
        self.name = name if name is not None else type(model).__name__
        self.revision = revision
        self.source = source
        self.depth = len(model.blocks)
        self.embed_dim = int(getattr(model, "embed_dim", None) or model.num_features)
        self.num_heads = getattr(getattr(model.blocks[0], "attn", None), "num_heads", None)
        self.patch_size = patch_size[0]
        self.img_size = run_size
        layout = self.family.token_layout(model)
        self.num_prefix_tokens = layout.num_prefix_tokens
        self.num_reg_tokens = layout.num_reg_tokens
        self.has_class_token = layout.has_class_token
        if data_config is None:
            data_config = self._default_data_config()
        self.data_config = dict(data_config)
        self.image_processor = image_processor

    @property
    def eval_transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> normalised [C, H, W] tensor, without augmentation: the teacher's own transformers image
        processor when it came with one (exactly its preprocessing), else timm's eval transform of data_config."""
        if self.image_processor is not None:
            return ProcessorTransform(self.image_processor)
        return build_transform(self.data_config, is_training=False)

    def _default_data_config(self) -> dict[str, Any]:
        in_chans = in_chans_of(self.model)
        arch = getattr(self.model, "pretrained_cfg", {}).get("architecture")
        if _is_dinov2_name(arch) or _is_dinov2_name(self.name):
            return dinov2_data_config(in_chans, self.img_size)
        data_config = resolve_data_config({}, model=self.model)
        data_config["input_size"] = (in_chans, *self.img_size)
        return data_config

    @property
    def blocks(self) -> nn.Sequential | nn.ModuleList:
        """The L teacher blocks, ``self.model.blocks``."""
        return self.model.blocks

    @property
    def num_patches(self) -> int:
        """Patch tokens at ``img_size``."""
        return (self.img_size[0] // self.patch_size) * (self.img_size[1] // self.patch_size)

    @property
    def num_tokens(self) -> int:
        """Tokens per state at ``img_size``: prefix (class + registers) plus patches."""
        return self.num_prefix_tokens + self.num_patches

    def train(self, mode: bool = True) -> Teacher:
        """A teacher stays in eval mode whatever ``mode`` says (dropout, drop-path and patch-drop off)."""
        return super().train(False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """x_0 ``[B, N, D]``: what the family's forward_features feeds to its first block."""
        return self.trajectory(images, layers=[0])[:, 0]

    def resolve_layers(self, layers: Sequence[int] | None = None) -> list[int]:
        """Layer indices in 0..L (negative counts from the end, -1 = L); ``None`` = all L + 1."""
        num_states = self.depth + 1
        if layers is None:
            return list(range(num_states))
        if isinstance(layers, (int, torch.Tensor)) or not isinstance(layers, Sequence):
            raise TypeError(
                f"layers must be a sequence of ints in 0..{self.depth} (e.g. [0, {self.depth}]) or None; "
                f"got {type(layers).__name__} {layers!r}."
            )
        if len(layers) == 0:
            raise ValueError("layers is empty; pass None for all L + 1 states.")
        resolved = []
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise TypeError(f"layers must hold ints; got {type(layer).__name__} {layer!r}.")
            if not -num_states <= layer < num_states:
                raise ValueError(
                    f"layer {layer} is out of range for a teacher of depth {self.depth}: valid indices are "
                    f"0..{self.depth} (0 = embeddings, l = output of block l) or -{num_states}..-1."
                )
            resolved.append(layer % num_states)
        return resolved

    def trajectory(self, images: torch.Tensor, layers: Sequence[int] | None = None) -> torch.Tensor:
        """Token states ``[B, len(layers), N, D]``, in the order of ``layers`` (default all L + 1).

        State 0 = embeddings, state l = raw output of block l (before the final norm). Blocks run only up
        to ``max(layers)`` and only the requested states are kept, in one preallocated tensor whose dtype
        is that of the embeddings (float32 under autocast: adding the position embedding promotes).
        Gradients follow the caller's grad mode; wrap in ``torch.no_grad()`` for targets.
        """
        layer_ids = self.resolve_layers(layers)
        _check_images(images)
        states, dtype = self._record_states(images, set(layer_ids))
        return torch.stack([states[layer].to(dtype) for layer in layer_ids], dim=1)

    def _record_states(self, images: torch.Tensor, layers: set[int]) -> tuple[dict[int, torch.Tensor], torch.dtype]:
        """States ``{l: [B, N, D]}`` for ``layers`` and the embeddings' dtype, recorded by hooks on the blocks while
        the family's own forward_features runs; it stops after the last one needed."""
        last = max(layers)
        states: dict[int, torch.Tensor] = {}
        embed_dtype: list[torch.dtype] = []
        to_tokens = self.family.to_tokens

        def record_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs["x"]
            embed_dtype.append(x.dtype)
            if 0 in layers:
                states[0] = to_tokens(x)
            if last == 0:
                raise _StopForward

        def record_output(layer: int) -> Any:
            def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
                if layer in layers:
                    states[layer] = to_tokens(output)
                if layer == last:
                    raise _StopForward
            return hook

        # first in line: when state 0 is the last one needed, no other hook sees a block call that never runs
        handles = [self.blocks[0].register_forward_pre_hook(record_input, with_kwargs=True, prepend=True)]
        for layer in range(1, last + 1):
            handles.append(self.blocks[layer - 1].register_forward_hook(record_output(layer), with_kwargs=True))
        try:
            self.model.forward_features(images)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = sorted(layers - set(states))
        if missing:
            raise RuntimeError(f"{type(self.model).__name__}.forward_features did not produce states {missing}.")
        return states, embed_dtype[0]

    @property
    def head_kind(self) -> str:
        """What the teacher's head outputs: 'classifier' (class logits), 'embedding' (an image-embedding projection,
        as CLIP's and AIMv2's ``visual_projection``: no classes) or 'none' (pooled features)."""
        kind = getattr(self.model, "raptor_head", None)
        if kind is not None:
            return kind
        if int(getattr(self.model, "num_classes", 0) or 0) == 0:
            return "none"
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        architecture = str(cfg.get("architecture") or self.name)
        contrastive = any(part in architecture for part in ("clip", "siglip", "_pe_", "aimv2"))
        return "embedding" if contrastive and not cfg.get("label_names") else "classifier"

    @property
    def last_hidden_state(self) -> str:
        """The ``last_hidden_state`` convention of the teacher's transformers class: 'normed' (final norm on every
        token, as DINOv2 / SigLIP / AIMv2) or 'pre_norm' (the last block's output, as CLIP's vision tower)."""
        return getattr(self.model, "raptor_last_hidden_state", "normed")

    def forward_head_from_state(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from state x_L: the family's finish (final norm; class attention / neck), then its head."""
        return self.model.forward_head(self.finish(x))

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """forward_features output from a block state x_l (``[B, N, D]`` tokens)."""
        if self.family.nhwc_states and x.ndim == 3:
            grid = (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)
            x = self.family.to_state(x, grid)
        return self.family.finish(self.model, x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's own logits (its features when it has no classifier)."""
        _check_images(images)
        return self.model(images)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, source={self.source!r}, revision={self.revision!r}, depth={self.depth}, "
            f"embed_dim={self.embed_dim}, img_size={self.img_size}, num_prefix_tokens={self.num_prefix_tokens}"
        )


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        found = f"a {images.ndim}-d tensor of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) \
            else type(images).__name__
        raise ValueError(f"images must be a normalised [B, C, H, W] tensor; got {found}.")


def _check_timm_vit(model: nn.Module, label: str | None = None) -> None:
    """Raise unless ``model`` is a timm model of a supported ViT family (models/families.py) with blocks."""
    label = label or type(model).__name__
    if isinstance(model, RaptorMixin):
        raise TypeError(f"{label} is a Raptor; a teacher is the ViT a Raptor is distilled from.")
    if family_of(model) is None:
        raise TypeError(
            f"{label} is a {type(model).__name__} ({type(model).__module__}), not a timm ViT of a supported family "
            f"({', '.join(f.name for f in FAMILIES)}); a teacher must be {_ACCEPTED}."
        )
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        raise TypeError(f"{label} keeps no block stack in `.blocks` (got {type(blocks).__name__}).")
    if len(blocks) == 0:
        raise ValueError(f"{label} has no blocks; a teacher needs depth >= 1.")


# ----------------------------------------------------------------------------------------------------------
# loading


def _teacher_from_hf_module(
        hf_model: nn.Module,
        *,
        name: str,
        source: str,
        revision: str | None,
        img_size: int | None,
        processor_config: Mapping[str, Any] | None = None,
        image_processor: Any = None,
) -> Teacher:
    """A transformers model converted by its family's converter (hf_convert), run at ``img_size``, with the
    ``data_config`` of its ``preprocessor_config.json`` when given, else of the family's processor defaults, and
    its own ``image_processor`` (kept when it gives images of the run size)."""
    config = hf_model.config
    converter = hf_converter(hf_model_type(hf_model))
    model = converter.convert(hf_model)
    describe_for_timm(model, hf_model)
    native_size = native_img_size(model)
    run_size = pair(img_size) if img_size is not None else (
        converter.default_run_size(native_size) if converter.default_run_size else native_size)
    if run_size != native_size:
        if converter.set_run_size is None:
            raise ValueError(
                f"A transformers {config.model_type} teacher runs at its config's image_size {native_size}; "
                f"img_size={img_size} is not supported for this family (leave img_size unset)."
            )
        converter.set_run_size(model, run_size)
    if processor_config is not None:
        data_config = data_config_from_processor(processor_config, run_size, in_chans=in_chans_of(model))
    else:
        data_config = converter.data_config(config, run_size)
    if image_processor is not None and not _processor_gives(image_processor, (in_chans_of(model), *run_size)):
        warnings.warn(
            f"{name}: its image processor ({type(image_processor).__name__}) does not give {run_size[0]}x{run_size[1]} "
            f"images (the size the teacher runs at); images are prepared by timm's transform of the same settings "
            "instead, which can differ from the processor by resampling details.", stacklevel=3)
        image_processor = None
    return Teacher(
        model,
        name=name,
        source=source,
        revision=getattr(config, "_commit_hash", None) or revision,
        img_size=run_size,
        data_config=data_config,
        image_processor=image_processor,
    )


def _processor_gives(processor: Any, shape: tuple[int, ...]) -> bool:
    """Whether a transformers image processor turns a non-square image into one ``[C, H, W]`` tensor of ``shape``."""
    from PIL import Image

    try:
        pixel_values = processor(images=Image.new("RGB", (97, 61)), return_tensors="pt")["pixel_values"]
    except (TypeError, ValueError, KeyError):
        return False
    return isinstance(pixel_values, torch.Tensor) and tuple(pixel_values.shape) == (1, *shape)


# PIL resampling filters (the ``resample`` of a preprocessor_config.json) -> timm interpolation names
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def data_config_from_processor(
        processor_config: Mapping[str, Any],
        img_size: Sequence[int],
        in_chans: int = 3,
) -> dict[str, Any]:
    """timm ``data_config`` reproducing a transformers image processor config at run size ``img_size``.

    ``resample`` becomes the interpolation, ``image_mean`` / ``image_std`` the normalisation (CLIP's and
    SigLIP's are not ImageNet's). A shortest-edge resize followed by a centre crop keeps its ratio as
    ``crop_pct`` (crop / resize; DINOv2's 256 -> 224 is 0.875); a resize to a fixed height x width with no crop
    is timm's ``crop_mode='squash'``. Processors that do not normalise (``do_normalize: false``) get mean 0,
    std 1.
    """
    run_size = pair(img_size)
    resample = processor_config.get("resample", 3)
    if resample not in _PIL_RESAMPLE:
        raise ValueError(f"preprocessor_config.json: resample={resample!r} is not a PIL filter (0..5).")
    size = processor_config.get("size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = processor_config.get("crop_size") or {}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    do_resize = processor_config.get("do_resize", True)
    do_crop = processor_config.get("do_center_crop", False) and bool(crop)
    crop_pct, crop_mode = 1.0, "center"
    if do_resize and "shortest_edge" in size:
        if do_crop:
            crop_pct = min(crop["height"], crop["width"]) / size["shortest_edge"]
    elif do_resize and "height" in size and "width" in size:
        if do_crop:
            crop_pct = crop["height"] / size["height"]
        else:
            crop_mode = "squash"
    if processor_config.get("do_normalize", True):
        mean = tuple(processor_config.get("image_mean") or IMAGENET_DEFAULT_MEAN)
        std = tuple(processor_config.get("image_std") or IMAGENET_DEFAULT_STD)
    else:
        mean, std = (0.0,) * in_chans, (1.0,) * in_chans
    return {
        "input_size": (in_chans, *run_size),
        "interpolation": _PIL_RESAMPLE[resample],
        "mean": mean,
        "std": std,
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
    }


def _weights_error(sought: str, err: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"Could not load the pretrained weights {sought}: {type(err).__name__}: {err}\n"
        "Check the id, your connection, HF_HUB_OFFLINE and the Hub cache (HF_HUB_CACHE); "
        "load_teacher(..., pretrained=False) gives a random-init teacher of the same architecture."
    )


def _timm_weights_id(name: str, revision: str | None) -> str:
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    location = None if cfg is None else (cfg.hf_hub_id or cfg.url or cfg.file)
    location = f"{location}@{revision}" if location and revision else location
    return f"of timm model {name!r}" + (f" ({location})" if location else "")


def _check_timm_name(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise unless timm name builds a teacher-compatible ViT; checked on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False, **kwargs)
    _check_timm_vit(probe, label=f"timm model {name!r}")


def _create_timm_teacher(
        name: str,
        *,
        source: str,
        teacher_name: str,
        pretrained: bool,
        img_size: int | None,
        revision: str | None,
        kwargs: dict[str, Any],
) -> Teacher:
    model_name = name
    if revision is not None:
        if name.startswith("hf-hub:"):
            if "@" in name:
                raise ValueError(f"{name!r} already names a revision; do not pass revision={revision!r} as well.")
            model_name = f"{name}@{revision}"
        elif name.startswith("local-dir:"):
            raise ValueError(f"revision={revision!r} does not apply to a local folder ({name!r}).")
        elif pretrained:
            cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
            if cfg is None or not cfg.hf_hub_id:
                raise ValueError(
                    f"revision={revision!r} applies to Hub weights, and timm model {name!r} has no hf_hub_id."
                )
            kwargs = {"pretrained_cfg_overlay": dict(hf_hub_id=f"{cfg.hf_hub_id.split('@')[0]}@{revision}"), **kwargs}
    elif name.startswith("hf-hub:") and "@" in name:
        revision = name.rsplit("@", 1)[1]

    is_dinov2 = _is_dinov2_name(_timm_architecture(name))
    create_kwargs: dict[str, Any] = {}
    if not name.startswith(("hf-hub:", "local-dir:")):
        _check_timm_name(name, {k: v for k, v in kwargs.items() if k not in _TIMM_LOADING_KWARGS})
    if is_dinov2:  # built at its stored size, then resampled to the run size as DINOv2 does (set_vit_run_size)
        create_kwargs = dict(dynamic_img_size=True)
    elif img_size is not None:
        create_kwargs = dict(img_size=img_size)
    create_kwargs.update(kwargs)
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **create_kwargs)
    except OSError as err:
        if name.startswith(("hf-hub:", "local-dir:")):
            raise FileNotFoundError(
                f"Could not load timm model {model_name!r}: {type(err).__name__}: {err}\nIts config.json is read even "
                "with pretrained=False: check the id or folder, your connection, HF_HUB_OFFLINE and the Hub cache "
                "(HF_HUB_CACHE)."
            ) from err
        if pretrained:
            raise _weights_error(_timm_weights_id(name, revision), err) from err
        raise
    if is_dinov2:
        native_size = tuple(model.patch_embed.img_size)
        set_vit_run_size(model, pair(img_size) if img_size is not None else dinov2_run_size(native_size))
    # the architecture arguments, so that a Raptor of this teacher can be rebuilt from config.json
    model.raptor_teacher_args = {k: v for k, v in create_kwargs.items() if k not in _TIMM_LOADING_KWARGS}
    return Teacher(model, name=teacher_name, source=source, revision=revision)


def _folder_teacher_name(folder: str, architecture: str) -> str:
    """A local folder's teacher named portably, by what it holds and the folder's own name: never a local path."""
    return f"{architecture} ({Path(folder).expanduser().resolve().name})"


def _timm_architecture(name: str) -> str:
    """The timm architecture a name builds: a local folder's config.json ``architecture`` wins over its path."""
    if name.startswith("local-dir:"):
        config_path = Path(name.split(":", 1)[1]).expanduser() / "config.json"
        if config_path.is_file():
            with open(config_path, encoding="utf-8") as f:
                return json.load(f).get("architecture") or name
    return name


def _read_config_json(
        location: str,
        *,
        is_folder: bool,
        revision: str | None,
        kwargs: dict[str, Any],
) -> tuple[dict[str, Any], str | None]:
    """config.json of a folder or a Hub repo (through huggingface_hub, which honours HF_HUB_OFFLINE), and the
    commit it was resolved at (None for a folder)."""
    commit = None
    if is_folder:
        path = Path(location) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"Folder {location!r} has no config.json; a teacher folder is a transformers save_pretrained "
                "folder or a timm folder (config.json + weights)."
            )
    else:
        from huggingface_hub import hf_hub_download

        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "token", "local_files_only") if k in kwargs}
        try:
            path = hf_hub_download(location, "config.json", revision=revision, **hub_kwargs)
        except OSError as err:
            raise FileNotFoundError(
                f"{location!r} is not an embedded teacher, a timm model name or an existing folder, and its "
                f"config.json could not be fetched as a Hub repo id (revision {revision!r}): "
                f"{type(err).__name__}: {err}\nAccepted: {_ACCEPTED}."
            ) from err
        snapshot = Path(path).parent
        if snapshot.parent.name == "snapshots" and _COMMIT_HASH.fullmatch(snapshot.name):
            commit = snapshot.name
    with open(path, encoding="utf-8") as f:
        return json.load(f), commit


def _read_processor_config(location: str, *, is_folder: bool, revision: str | None) -> dict[str, Any] | None:
    """preprocessor_config.json of a folder or Hub repo, or None where there is none."""
    if is_folder:
        path = Path(location) / "preprocessor_config.json"
        if not path.is_file():
            return None
    else:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            path = Path(hf_hub_download(location, "preprocessor_config.json", revision=revision))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            cached = try_to_load_from_cache(location, "preprocessor_config.json", revision=revision)
            if not isinstance(cached, str):
                return None
            path = Path(cached)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _load_hf_teacher(
        location: str,
        *,
        is_folder: bool,
        pretrained: bool,
        img_size: int | None,
        revision: str | None,
        kwargs: dict[str, Any],
) -> Teacher:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, revision=revision)
    model_cls = hf_model_class(config)
    if pretrained:
        try:
            hf_model = model_cls.from_pretrained(location, revision=revision, **kwargs)
        except OSError as err:
            sought = f"of transformers {model_cls.__name__} {location!r}" + (f" @ {revision}" if revision else "")
            raise _weights_error(sought, err) from err
    else:
        hf_model = model_cls.from_config(config, **kwargs) if hasattr(model_cls, "from_config") \
            else model_cls._from_config(config, **kwargs)
    processor_config = _read_processor_config(location, is_folder=is_folder, revision=revision)
    return _teacher_from_hf_module(
        hf_model.eval(),
        name=location,
        source="hf",
        revision=revision,
        img_size=img_size,
        processor_config=processor_config,
        image_processor=_load_image_processor(location, revision) if processor_config is not None else None,
    )


def _load_image_processor(location: str, revision: str | None) -> Any:
    """The transformers image processor of a folder or Hub repo, as its pipeline would load it."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(location, revision=revision)


def _load_from_string(
        source: str,
        *,
        pretrained: bool,
        img_size: int | None,
        revision: str | None,
        kwargs: dict[str, Any],
) -> Teacher:
    if source in EMBEDDED_TEACHERS:
        if revision is not None:
            raise ValueError(f"{source!r} ships inside raptor_zoo; revision={revision!r} does not apply.")
        timm_name = EMBEDDED_TEACHERS[source]
        if not timm.is_model(timm_name):
            raise ValueError(
                f"The embedded teacher {source!r} needs timm model {timm_name!r}, which is not registered; "
                "it is registered by `import raptor_zoo` (raptor_zoo.models.digits_vit)."
            )
        return _create_timm_teacher(
            timm_name, source="embedded", teacher_name=source, pretrained=pretrained, img_size=img_size,
            revision=None, kwargs=kwargs,
        )
    if source.startswith(("hf-hub:", "local-dir:")):
        teacher_name = source
        if source.startswith("local-dir:"):
            teacher_name = _folder_teacher_name(source.split(":", 1)[1], _timm_architecture(source))
        return _create_timm_teacher(
            source, source="timm", teacher_name=teacher_name, pretrained=pretrained, img_size=img_size,
            revision=revision, kwargs=kwargs,
        )
    expanded = os.path.expanduser(source)
    is_folder = os.path.isdir(expanded)
    if not is_folder and timm.is_model(source):
        return _create_timm_teacher(
            source, source="timm", teacher_name=source, pretrained=pretrained, img_size=img_size,
            revision=revision, kwargs=kwargs,
        )
    if not is_folder:
        if source.startswith((".", "/", "~")) or source.count("/") > 1:
            raise FileNotFoundError(f"Teacher folder {source!r} does not exist. Accepted: {_ACCEPTED}.")
        if "/" not in source:
            close = difflib.get_close_matches(source, timm.list_models(), n=3)
            hint = f" Close timm names: {', '.join(close)}." if close else ""
            raise ValueError(
                f"{source!r} is not an embedded teacher, a registered timm model or an existing folder, and "
                f"not an org/name Hub repo id.{hint} Accepted: {_ACCEPTED}."
            )
    location = expanded if is_folder else source
    config, commit = _read_config_json(location, is_folder=is_folder, revision=revision, kwargs=kwargs)
    model_type = config.get("model_type")
    if model_type in HF_CONVERTERS:  # weights from the commit the config came from
        teacher = _load_hf_teacher(
            location, is_folder=is_folder, pretrained=pretrained, img_size=img_size, revision=commit or revision, kwargs=kwargs,
        )
        if is_folder:
            teacher.name = _folder_teacher_name(location, model_type)
        return teacher
    if "architecture" in config:  # a timm folder / Hub repo
        timm_id = f"local-dir:{location}" if is_folder else f"hf-hub:{location}"
        return _create_timm_teacher(
            timm_id, source="timm", pretrained=pretrained, img_size=img_size,
            teacher_name=_folder_teacher_name(location, config["architecture"]) if is_folder else source,
            revision=None if is_folder else revision, kwargs=kwargs,
        )
    raise ValueError(
        f"{source!r} holds a config.json with model_type {model_type!r} and no timm 'architecture'; "
        f"a teacher must be a transformers model of type {', '.join(sorted(HF_CONVERTERS))} or a timm ViT."
    )


def load_teacher(
        source: str | os.PathLike | nn.Module | Teacher,
        *,
        pretrained: bool = True,
        img_size: int | None = None,
        revision: str | None = None,
        **kwargs: Any,
) -> Teacher:
    """A frozen :class:`Teacher` from a name, a folder, a Hub repo id or a module.

    Args:
        source: one of
            ``"digits-vit"`` (embedded, :data:`EMBEDDED_TEACHERS`);
            a timm model name, ``"hf-hub:org/name[@rev]"`` or ``"local-dir:/path"`` (``timm.create_model``);
            a folder or Hub repo id with a transformers ``config.json`` of a type in
            ``raptor_zoo.hf_convert.HF_CONVERTERS`` (``from_pretrained``, which honours ``HF_HUB_OFFLINE``; its
            ``preprocessor_config.json`` gives the ``data_config``), or a timm folder / repo (config.json with
            ``architecture``);
            a timm ViT module of a supported family, a transformers module of a converted type (converted
            exactly into timm, :mod:`raptor_zoo.hf_convert`), or a Teacher.
        pretrained: load the published weights (names and repo ids); ``False`` gives a random-init teacher.
        img_size: size to run the teacher at; none = the size its config (folder, module) or timm name
            declares, except that a DINOv2 checkpoint's stored 518 px grid runs at 224 (the paper's protocol:
            bicubic resize to 256, centre crop 224, ImageNet mean/std). DINOv2 and transformers teachers are
            built at their own size with ``dynamic_img_size=True``, then their position grid is resampled to
            ``img_size`` as transformers and DINOv2 do (bicubic, no antialiasing), so they equal the reference
            model at the size they run at. Other timm names are created at ``img_size`` when given. A module
            keeps its own size unless it was built with ``dynamic_img_size=True``.
        revision: Hub revision (branch, tag or commit) for Hub weights.
        **kwargs: forwarded to ``timm.create_model`` or the transformers ``from_pretrained`` / ``from_config``.

    Modules are wrapped as ``source="module"`` with ``name`` = their class name (a transformers module keeps
    the commit its config records as ``revision``); ``kwargs`` do not apply to them.
    """
    if kwargs and isinstance(source, nn.Module):
        raise TypeError(f"Extra keyword arguments {sorted(kwargs)} apply to names and folders, not to modules.")
    if isinstance(source, Teacher):
        if img_size is None or pair(img_size) == source.img_size:
            return source
        data_config = dict(source.data_config, input_size=(source.data_config["input_size"][0], *pair(img_size)))
        return Teacher(
            source.model, name=source.name, source=source.source, revision=source.revision, img_size=img_size,
            data_config=data_config,
        )
    if isinstance(source, nn.Module):
        if is_hf_teacher(source):
            return _teacher_from_hf_module(
                source, name=type(source).__name__, source="module", revision=revision, img_size=img_size,
            )
        if getattr(source, "config", None) is not None and family_of(source) is None:
            model_type = getattr(source.config, "model_type", None)
            raise TypeError(
                f"{type(source).__name__} (transformers model_type {model_type!r}) is not a supported ViT; "
                f"transformers teachers must be of type {', '.join(sorted(HF_CONVERTERS))}. Accepted: {_ACCEPTED}."
            )
        _check_timm_vit(source)
        return Teacher(source, name=type(source).__name__, source="module", revision=revision, img_size=img_size)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(f"load_teacher got a {type(source).__name__}; accepted: {_ACCEPTED}.")
    if not source:
        raise ValueError(f"load_teacher got an empty string; accepted: {_ACCEPTED}.")
    return _load_from_string(source, pretrained=pretrained, img_size=img_size, revision=revision, kwargs=kwargs)
