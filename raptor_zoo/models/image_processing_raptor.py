"""transformers image processor of a Raptor folder: timm's eval transform of the model's ``data_config``.

``preprocessor_config.json`` holds the timm data config itself (``input_size``, ``interpolation``, ``mean``,
``std``, ``crop_pct``, ``crop_mode``) and ``RaptorImageProcessor`` runs timm's ``create_transform`` on it (eval
mode: resize to ``size / crop_pct``, centre crop, normalise, as ``raptor_zoo.data.build_transform`` does), so
``AutoImageProcessor`` and the ``image-classification`` / ``image-feature-extraction`` pipelines see exactly the
tensors timm and raptor_zoo's loaders give the model. transformers' own ``BitImageProcessor`` is close but not
equal: its centre crop floors odd margins where torchvision rounds them (a one-pixel shift), and its default
torchvision backend resizes tensors instead of PIL images.

A Raptor folder's config.json carries timm's ``pretrained_cfg`` (so ``timm.create_model('hf-hub:...')`` loads it),
which makes transformers take a local folder for a timm checkpoint: ``AutoImageProcessor`` then reads config.json in
place of preprocessor_config.json, and since transformers 5.25 it builds the processor from that dict
(``from_dict``) instead of letting the class read its own file (``from_pretrained``). ``from_dict`` therefore also
accepts a config.json dict and resolves its ``pretrained_cfg`` as timm does, as transformers'
``TimmWrapperImageProcessor`` does; save_pretrained writes the same processor to preprocessor_config.json.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import transformers
from timm.data import create_transform, resolve_data_config
from transformers import AutoImageProcessor
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_transforms import to_pil_image
from transformers.image_utils import ImageInput, make_flat_list_of_images

from .configuration_raptor import RaptorConfig

__all__ = ["RaptorImageProcessor", "register_raptor_image_processor"]

_CROP_MODES = ("center", "squash", "border")
# keys transformers writes into preprocessor_config.json beside the processor's own (ImageProcessingMixin.to_dict)
_SAVED_KEYS = ("image_processor_type",)
_FIXED_TRANSFORM = ("its transform is the model's data config (input_size, interpolation, mean, std, crop_pct, "
                    "crop_mode: edit pretrained_cfg in config.json and preprocessor_config.json to change it)")


class RaptorImageProcessor(BaseImageProcessor):
    """timm's eval transform (``data_config``) as a transformers image processor; returns ``pixel_values``.

    A Raptor of a transformers teacher carries the teacher's own processor (``teacher_processor``: its
    ``to_dict()``, e.g. a ``CLIPImageProcessor``'s) and runs it instead, so pipelines prepare images exactly as the
    teacher's did; ``data_config`` then describes the same preprocessing for timm.
    """

    model_input_names = ["pixel_values"]

    def __init__(
            self,
            input_size: Sequence[int] = (3, 224, 224),
            interpolation: str = "bicubic",
            mean: Sequence[float] = (0.485, 0.456, 0.406),
            std: Sequence[float] = (0.229, 0.224, 0.225),
            crop_pct: float = 0.875,
            crop_mode: str = "center",
            teacher_processor: Mapping[str, Any] | None = None,
            **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(_SAVED_KEYS))
        if unknown:
            raise TypeError(f"RaptorImageProcessor takes no options {unknown}; {_FIXED_TRANSFORM}.")
        super().__init__(**kwargs)
        if teacher_processor is not None and not hasattr(transformers, str(teacher_processor.get("image_processor_type"))):
            raise ValueError(f"teacher_processor must be a transformers image processor's to_dict() naming its class "
                             f"(image_processor_type), got {teacher_processor.get('image_processor_type')!r}.")
        self.teacher_processor = dict(teacher_processor) if teacher_processor is not None else None
        if len(input_size) != 3 or len(mean) != input_size[0] or len(std) != input_size[0]:
            raise ValueError(f"input_size must be (channels, height, width) with one mean and std per channel, got "
                             f"input_size={list(input_size)}, mean={list(mean)}, std={list(std)}.")
        if not 0.0 < crop_pct <= 1.0 or crop_mode not in _CROP_MODES:
            raise ValueError(f"crop_pct must lie in (0, 1] and crop_mode be one of {_CROP_MODES}, got "
                             f"crop_pct={crop_pct}, crop_mode={crop_mode!r}.")
        self.input_size = [int(v) for v in input_size]
        self.interpolation = interpolation
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.crop_pct = float(crop_pct)
        self.crop_mode = crop_mode

    @classmethod
    def from_pretrained_cfg(cls, pretrained_cfg: Mapping[str, Any]) -> RaptorImageProcessor:
        """The processor of a timm ``pretrained_cfg`` (as config.json stores it), resolved as timm resolves it."""
        data_config = resolve_data_config(pretrained_cfg=dict(pretrained_cfg))
        return cls(**{key: data_config[key] for key in
                      ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")})

    @classmethod
    def from_dict(cls, image_processor_dict: dict[str, Any], **kwargs: Any) -> RaptorImageProcessor:
        """The processor of a preprocessor_config.json dict, or of a folder's config.json dict (its
        ``pretrained_cfg`` and ``teacher_image_processor``: what ``AutoImageProcessor`` reads from a local Raptor
        folder, see the module docstring)."""
        if "pretrained_cfg" in image_processor_dict:
            processor = cls.from_pretrained_cfg(image_processor_dict["pretrained_cfg"])
            teacher_processor = image_processor_dict.get("teacher_image_processor")
            image_processor_dict = dict(processor.to_dict(), teacher_processor=teacher_processor)
        return super().from_dict(image_processor_dict, **kwargs)

    @property
    def data_config(self) -> dict[str, Any]:
        """The timm data config this processor applies."""
        return dict(input_size=tuple(self.input_size), interpolation=self.interpolation, mean=tuple(self.mean),
                    std=tuple(self.std), crop_pct=self.crop_pct, crop_mode=self.crop_mode)

    def teacher(self) -> BaseImageProcessor | None:
        """The teacher's own processor this one runs, or None (timm's transform of ``data_config``)."""
        if self.teacher_processor is None:
            return None
        return getattr(transformers, self.teacher_processor["image_processor_type"]).from_dict(self.teacher_processor)

    def preprocess(self, images: ImageInput, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        """PIL images, arrays or tensors (one or a list) -> ``pixel_values`` [B, C, H, W], normalised."""
        teacher = self.teacher()
        if teacher is not None:
            return BatchFeature({"pixel_values": teacher(images=images, return_tensors="pt", **kwargs)["pixel_values"]},
                                tensor_type="pt")
        if return_tensors not in ("pt", None):
            raise ValueError(f"RaptorImageProcessor returns torch tensors; pass return_tensors='pt', "
                             f"got {return_tensors!r}.")
        if kwargs:
            raise TypeError(f"RaptorImageProcessor takes no preprocessing options {sorted(kwargs)}; "
                            f"{_FIXED_TRANSFORM}.")
        config = self.data_config
        transform = create_transform(input_size=config["input_size"], is_training=False,
                                     interpolation=config["interpolation"], mean=config["mean"], std=config["std"],
                                     crop_pct=config["crop_pct"], crop_mode=config["crop_mode"])
        mode = "RGB" if self.input_size[0] == 3 else "L"
        pixels = [transform(to_pil_image(image).convert(mode)) for image in make_flat_list_of_images(images)]
        return BatchFeature({"pixel_values": torch.stack(pixels)}, tensor_type="pt")


def register_raptor_image_processor() -> None:
    """Register ``RaptorImageProcessor`` for model_type "raptor" with AutoImageProcessor (idempotent)."""
    AutoImageProcessor.register(
        RaptorConfig, image_processor_classes={"pil": RaptorImageProcessor, "torchvision": RaptorImageProcessor},
        exist_ok=True)
