"""Raptor models for transformers: RaptorModel, RaptorForImageClassification, RaptorBackbone.

Every class wraps the same nn core, the timm ``RaptorVisionTransformer``, stored as ``self.raptor``
(``base_model_prefix``), so that one Hub folder loads in raptor_zoo, timm and transformers.

**Key mapping (the only one):** ``model.safetensors`` holds the timm state_dict; transformers key = ``"raptor." +``
timm key. It is registered as a checkpoint conversion for model_type "raptor" (``PrefixChange``), applied when
loading and reversed when saving, so ``save_pretrained`` writes timm keys again. ``RaptorModel`` and
``RaptorBackbone`` build the core without a classifier: a folder's ``head.*`` tensors are unexpected for them and
skipped, as transformers does for a base model loaded from a task checkpoint.

Conventions of ``Dinov2Model``: ``output_hidden_states=True`` returns the L + 1 unrolled states (``[0]`` the
embeddings after cls, registers and position embedding, ``[l]`` the raw output of block application l),
``last_hidden_state`` is the final-normed last state, ``pooler_output`` the normed cls token. Attention weights are
not returned (the blocks use scaled-dot-product attention); ``attn_implementation`` "eager" switches the blocks to
explicit softmax attention, "sdpa" (default) to the fused kernel.
"""

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    PreTrainedModel,
    initialization as init,
)
from transformers.backbone_utils import BackboneMixin
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import PrefixChange
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling, ImageClassifierOutput

from .configuration_raptor import RaptorConfig
from .raptor_vit import DepthScale, RaptorVisionTransformer

__all__ = [
    "RaptorPreTrainedModel",
    "RaptorModel",
    "RaptorForImageClassification",
    "RaptorBackbone",
    "register_raptor_auto_classes",
]


class RaptorPreTrainedModel(PreTrainedModel):
    """Shared weight init, checkpointing and the L + 1 state trajectory of the wrapped timm Raptor."""

    config: RaptorConfig
    base_model_prefix = "raptor"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["RaptorBlock"]
    _supports_sdpa = True
    model_tags = ["raptor", "timm"]
    accepts_loss_kwargs = False

    def _build_raptor(self, num_classes: int) -> RaptorVisionTransformer:
        core = RaptorVisionTransformer(**self.config.timm_model_args(num_classes=num_classes))
        for module in core.modules():
            if isinstance(module, DepthScale):
                # zero last layer: a fresh Raptor block is exactly its init block (marked on the Linear itself,
                # as transformers initialises custom-code modules without own parameters as already done)
                module.fc2.zero_init = True
        return core

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """timm's ViT init ('' mode) through transformers' guarded init functions (loaded tensors are kept)."""
        std = self.config.initializer_range
        if getattr(module, "zero_init", False):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm) or type(module).__name__ in ("RmsNorm", "LayerNorm"):
            if getattr(module, "weight", None) is not None:
                init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif hasattr(module, "gamma") and hasattr(module, "init_values"):  # timm LayerScale
            init.constant_(module.gamma, module.init_values)
        if isinstance(module, RaptorVisionTransformer):
            if module.pos_embed is not None:
                init.trunc_normal_(module.pos_embed, std=std)
            if module.cls_token is not None:
                init.normal_(module.cls_token, std=1e-6)
            if module.reg_token is not None:
                init.normal_(module.reg_token, std=1e-6)

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the wrapped Raptor checkpoints its block applications (non-reentrant)."""
        return self.raptor.grad_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enable: bool) -> None:
        self.raptor.set_grad_checkpointing(enable)

    def _set_gradient_checkpointing(self, enable: bool = True, *args: Any, **kwargs: Any) -> None:
        # the core checkpoints each block application itself (torch.utils.checkpoint, use_reentrant=False)
        self.raptor.set_grad_checkpointing(enable)

    def get_input_embeddings(self) -> nn.Module:
        return self.raptor.patch_embed

    def save_pretrained(self, save_directory: Any, *, state_dict: dict | None = None, **kwargs: Any) -> Any:
        """transformers' save_pretrained writing the Hub folder layout: model.safetensors holds timm keys (the
        ``"raptor."`` prefix removed, also for models not loaded by from_pretrained) and config.json's timm keys
        describe the head actually saved."""
        prefix = f"{self.base_model_prefix}."
        state_dict = self.state_dict() if state_dict is None else state_dict
        state_dict = {key.removeprefix(prefix): value for key, value in state_dict.items()}
        self.config._saved_num_classes = self.raptor.num_classes
        try:
            return super().save_pretrained(save_directory, state_dict=state_dict, **kwargs)
        finally:
            del self.config._saved_num_classes

    def _use_fused_attention(self) -> None:
        fused = self.config._attn_implementation != "eager"
        for block in self.raptor.blocks:
            block.attn.fused_attn = fused

    def _trajectory(
            self,
            pixel_values: torch.Tensor,
            output_hidden_states: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Last raw state and, if asked, all L + 1 states (embeddings, then each block application's output)."""
        if pixel_values is None:
            raise ValueError("pixel_values is required: a normalised image batch of shape (batch, channels, H, W).")
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}.")
        self._use_fused_attention()
        core = self.raptor
        x = core._embed(pixel_values.to(dtype=core.patch_embed.proj.weight.dtype))
        if not output_hidden_states:
            return core.forward_steps(x, 0, core.depth), None
        states = [x]
        for step in range(core.depth):
            x = core.forward_steps(x, step, step + 1)
            states.append(x)
        return x, tuple(states)

    def _resolve_flags(self, output_hidden_states: bool | None, return_dict: bool | None) -> tuple[bool, bool]:
        return (self.config.output_hidden_states if output_hidden_states is None else output_hidden_states,
                self.config.return_dict if return_dict is None else return_dict)

    @staticmethod
    def _check_attentions(output_attentions: bool | None) -> None:
        if output_attentions:
            raise ValueError("Raptor blocks do not return attention weights; call with output_attentions=False.")


class RaptorModel(RaptorPreTrainedModel):
    """Bare Raptor: normed token states and pooled cls token, no classifier."""

    def __init__(self, config: RaptorConfig) -> None:
        super().__init__(config)
        self.raptor = self._build_raptor(num_classes=0)
        self.post_init()

    def forward(
            self,
            pixel_values: torch.Tensor | None = None,
            output_hidden_states: bool | None = None,
            output_attentions: bool | None = None,
            return_dict: bool | None = None,
            **kwargs: Any,
    ) -> BaseModelOutputWithPooling | tuple[torch.Tensor, ...]:
        r"""
        Args:
            pixel_values: normalised images (batch, channels, height, width).
            output_hidden_states: return the L + 1 unrolled states (``[0]`` = embeddings).
        """
        self._check_attentions(output_attentions)
        output_hidden_states, return_dict = self._resolve_flags(output_hidden_states, return_dict)
        last, hidden_states = self._trajectory(pixel_values, output_hidden_states)
        sequence_output = self.raptor.norm(last)
        if self.raptor.has_class_token:
            pooled_output = sequence_output[:, 0]
        else:
            pooled_output = sequence_output[:, self.raptor.num_prefix_tokens:].mean(dim=1)
        if not return_dict:
            return tuple(v for v in (sequence_output, pooled_output, hidden_states) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output, pooler_output=pooled_output, hidden_states=hidden_states)


class RaptorForImageClassification(RaptorPreTrainedModel):
    """Raptor with its classifier; pooling is ``config.global_pool`` (token, avg or cls_avg), as in timm."""

    def __init__(self, config: RaptorConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.raptor = self._build_raptor(num_classes=config.num_labels)
        self.post_init()

    def forward(
            self,
            pixel_values: torch.Tensor | None = None,
            labels: torch.Tensor | None = None,
            output_hidden_states: bool | None = None,
            output_attentions: bool | None = None,
            return_dict: bool | None = None,
            **kwargs: Any,
    ) -> ImageClassifierOutput | tuple[torch.Tensor, ...]:
        r"""
        Args:
            pixel_values: normalised images (batch, channels, height, width).
            labels: class indices (single-label), multi-hot targets (multi-label) or values (regression); the
                loss follows ``config.problem_type`` as in transformers.
            output_hidden_states: return the L + 1 unrolled states (``[0]`` = embeddings).
        """
        self._check_attentions(output_attentions)
        output_hidden_states, return_dict = self._resolve_flags(output_hidden_states, return_dict)
        last, hidden_states = self._trajectory(pixel_values, output_hidden_states)
        logits = self.raptor.forward_head(self.raptor.norm(last))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        if not return_dict:
            return tuple(v for v in (loss, logits, hidden_states) if v is not None)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)


class RaptorBackbone(BackboneMixin, RaptorPreTrainedModel):
    """Raptor as a backbone: feature maps of the selected unrolled states (``stem``, ``stage1`` .. ``stageL``)."""

    has_attentions = False

    def __init__(self, config: RaptorConfig) -> None:
        super().__init__(config)
        self.raptor = self._build_raptor(num_classes=0)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.post_init()

    def forward(
            self,
            pixel_values: torch.Tensor,
            output_hidden_states: bool | None = None,
            output_attentions: bool | None = None,
            return_dict: bool | None = None,
            **kwargs: Any,
    ) -> BackboneOutput | tuple[Any, ...]:
        r"""
        Args:
            pixel_values: normalised images (batch, channels, height, width).
            output_hidden_states: also return the L + 1 unrolled states.
        """
        self._check_attentions(output_attentions)
        output_hidden_states, return_dict = self._resolve_flags(output_hidden_states, return_dict)
        _, hidden_states = self._trajectory(pixel_values, output_hidden_states=True)
        batch_size, _, height, width = pixel_values.shape
        grid = self.raptor.patch_embed.dynamic_feat_size((height, width))
        feature_maps = ()
        for stage, state in zip(self.stage_names, hidden_states):
            if stage not in self.out_features:
                continue
            if self.config.apply_layernorm:
                state = self.raptor.norm(state)
            if self.config.reshape_hidden_states:
                state = state[:, self.raptor.num_prefix_tokens:]
                state = state.reshape(batch_size, *grid, -1).permute(0, 3, 1, 2).contiguous()
            feature_maps += (state,)
        if not return_dict:
            return (feature_maps, hidden_states) if output_hidden_states else (feature_maps,)
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states if output_hidden_states else None)


def register_raptor_auto_classes() -> None:
    """Register "raptor" with AutoConfig, AutoModel, AutoModelForImageClassification and AutoBackbone, and the
    ``k <-> "raptor." + k`` checkpoint key mapping. Idempotent (safe to call on every ``import raptor_zoo``)."""
    AutoConfig.register(RaptorConfig.model_type, RaptorConfig, exist_ok=True)
    AutoModel.register(RaptorConfig, RaptorModel, exist_ok=True)
    AutoModelForImageClassification.register(RaptorConfig, RaptorForImageClassification, exist_ok=True)
    AutoBackbone.register(RaptorConfig, RaptorBackbone, exist_ok=True)
    register_checkpoint_conversion_mapping(
        RaptorConfig.model_type, [PrefixChange(prefix_to_add=RaptorPreTrainedModel.base_model_prefix)], overwrite=True)
