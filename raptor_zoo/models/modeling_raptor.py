"""Raptor models for transformers: RaptorModel, RaptorForImageClassification, RaptorBackbone.

``RaptorModel`` and ``RaptorBackbone`` wrap the nn core, a headless timm Raptor of the teacher's family, stored as
``self.raptor``. ``RaptorForImageClassification`` is built on a ``RaptorModel`` (``self.raptor``, the
``base_model_prefix``) with timm's classifier ``self.head`` beside it, as transformers builds DINOv2's heads; its
``to_timm()`` gives the complete timm model (head included) sharing the same tensors.

**Key mapping (the only one):** ``model.safetensors`` holds the timm state_dict; transformers key = ``"raptor." +``
timm key. It is registered as a checkpoint conversion for model_type "raptor" (``PrefixChange``), applied when
loading and reversed when saving, so ``save_pretrained`` writes timm keys again. On top of it transformers applies
its own ``base_model_prefix`` rule: a head class holds the base model's keys one ``raptor.`` level deeper
(``raptor.raptor.blocks.0...``) and timm's ``head.*`` as its own ``head.*``. ``RaptorModel`` and ``RaptorBackbone``
loading a classifier folder skip its ``head.*`` quietly (``_keys_to_ignore_on_load_unexpected``), as a base model
does from a task checkpoint; any other unexpected or missing tensor is reported.

Conventions of ``Dinov2Model``: ``output_hidden_states=True`` returns the L + 1 unrolled states (``[0]`` the
embeddings after cls, registers and position embedding, ``[l]`` the raw output of block application l),
``last_hidden_state`` is the final-normed last state, ``pooler_output`` the normed cls token.
``output_attentions=True`` returns the L per-step attention probabilities [B, heads, N, N] (one per block
application, as ``hidden_states`` has L + 1 entries); it runs the blocks' explicit softmax attention for that call,
whose probabilities are the ones the output is computed from (a relaxed Raptor's adapted attention runs fused: its
maps are recomputed, see ``attention_maps.attention_probs``). ``attn_implementation`` "eager" switches the blocks to
explicit softmax attention, "sdpa" (default) to the fused kernel.

Gradient checkpointing follows transformers: each unrolled step runs through ``RaptorStep``, a
``GradientCheckpointingLayer``, so ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)`` (e.g.
``{"use_reentrant": True}``) and the checkpoint function transformers passes in are what checkpoint each step.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    PreTrainedModel,
)
from transformers import (
    initialization as init,
)
from transformers.backbone_utils import BackboneMixin
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import PrefixChange
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput

from .attention_maps import attention_probs
from .configuration_raptor import RaptorConfig
from .families import attention_dropout, feature_grid, final_norm, patch_embedding
from .raptor_base import RaptorMixin
from .raptor_timm import raptor_from_model_args
from .recurrent import DepthScale

__all__ = [
    "RaptorPreTrainedModel",
    "RaptorStep",
    "RaptorModel",
    "RaptorEmbeddingOutput",
    "RaptorForImageClassification",
    "RaptorBackbone",
    "register_raptor_auto_classes",
]


class RaptorStep(GradientCheckpointingLayer):
    """One unrolled step: block ``step_block_indices[step]`` of the core applied at depth ``step + 1``.

    It owns no parameters (the k blocks are the core's); it is the unit transformers checkpoints. Returns the next
    state and, with ``output_attentions``, that step's attention probabilities.
    """

    def forward(
            self,
            hidden_states: torch.Tensor,
            core: RaptorMixin,
            step: int,
            output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not output_attentions:
            return core.forward_steps(hidden_states, step, step + 1), None
        block = core.unique_blocks[core.step_block_indices[step]]
        used_probs: list[torch.Tensor] = []
        dropout = attention_dropout(block)  # explicit-softmax attention passes its probabilities through it
        handle = None if dropout is None else dropout.register_forward_hook(
            lambda module, args, output: used_probs.append(output))
        try:
            next_states = core.forward_steps(hidden_states, step, step + 1)
        finally:
            if handle is not None:
                handle.remove()
        if used_probs:
            return next_states, used_probs[-1]
        return next_states, attention_probs(block, hidden_states, core.step_adapters(step))


class RaptorPreTrainedModel(PreTrainedModel):
    """Shared weight init, checkpointing and the L + 1 state trajectory of the wrapped timm Raptor."""

    config: RaptorConfig
    base_model_prefix = "raptor"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    model_tags = ["raptor", "timm"]
    accepts_loss_kwargs = False

    def _build_raptor(self, num_classes: int = 0) -> RaptorMixin:
        """The timm core, headless unless ``num_classes`` (a classifier head, when there is one, is the head class's
        own module): the Raptor of its teacher's family, built from config.json's model_args."""
        core = raptor_from_model_args(self.config.timm_model_args(num_classes=num_classes))
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
        if hasattr(module, "init_non_persistent_buffers"):  # timm RoPE tables etc. (not in the checkpoint)
            module.init_non_persistent_buffers()
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
        if isinstance(module, RaptorMixin):  # the tokens and position table a family keeps as bare parameters
            if isinstance(getattr(module, "pos_embed", None), nn.Parameter):
                init.trunc_normal_(module.pos_embed, std=std)
            for name in ("cls_token", "reg_token"):
                if isinstance(getattr(module, name, None), nn.Parameter):
                    init.normal_(getattr(module, name), std=1e-6)

    @property
    def core(self) -> RaptorMixin:
        """The wrapped headless timm Raptor."""
        return self.raptor if isinstance(self.raptor, RaptorMixin) else self.raptor.core

    def get_input_embeddings(self) -> nn.Module:
        return patch_embedding(self.core)

    def _timm_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This model's state_dict with timm keys (the documented mapping, reversed)."""
        core_prefix = "raptor.raptor." if isinstance(self.raptor, RaptorModel) else "raptor."
        return {key.removeprefix(core_prefix): value for key, value in state_dict.items()}

    @property
    def num_saved_classes(self) -> int:
        """Classes of the timm head this model saves (0: none)."""
        return 0

    def to_timm(self) -> RaptorMixin:
        """The timm Raptor this model saves (with the classifier head for a head class), sharing its tensors."""
        return self.core

    def save_pretrained(self, save_directory: Any, *, state_dict: dict | None = None, **kwargs: Any) -> Any:
        """transformers' save_pretrained writing the Hub folder layout: model.safetensors holds timm keys (also for
        models not loaded by from_pretrained) and config.json's timm keys describe the head actually saved."""
        state_dict = self._timm_state_dict(self.state_dict() if state_dict is None else state_dict)
        self.config._saved_num_classes = self.num_saved_classes
        try:
            return super().save_pretrained(save_directory, state_dict=state_dict, **kwargs)
        finally:
            del self.config._saved_num_classes

    def _use_fused_attention(self, fused: bool) -> None:
        for block in self.core.unique_blocks:
            attn = getattr(block, "attn", None)
            if hasattr(attn, "fused_attn"):
                attn.fused_attn = fused

    def _trajectory(
            self,
            pixel_values: torch.Tensor,
            output_hidden_states: bool,
            output_attentions: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """Last raw state, all L + 1 states if asked (embeddings, then each step's output) and the L per-step
        attention maps if asked."""
        if pixel_values is None:
            raise ValueError("pixel_values is required: a normalised image batch of shape (batch, channels, H, W).")
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}.")
        # returned attention maps must be the probabilities the blocks used: explicit softmax for that call
        self._use_fused_attention(self.config._attn_implementation != "eager" and not output_attentions)
        core = self.core
        x = core._embed(pixel_values.to(dtype=next(core.parameters()).dtype))
        states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for step in range(core.depth):
            x, probs = self.step(x, core=core, step=step, output_attentions=output_attentions)
            if states is not None:
                states.append(x)
            if attentions is not None:
                attentions.append(probs)
        return (x, tuple(states) if states is not None else None,
                tuple(attentions) if attentions is not None else None)

    def _resolve_flags(
            self, output_hidden_states: bool | None, output_attentions: bool | None, return_dict: bool | None,
    ) -> tuple[bool, bool, bool]:
        config = self.config
        return (config.output_hidden_states if output_hidden_states is None else output_hidden_states,
                config.output_attentions if output_attentions is None else output_attentions,
                config.return_dict if return_dict is None else return_dict)


@dataclass
class RaptorEmbeddingOutput(ModelOutput):
    """Output of a Raptor whose head is an image-embedding projection (``config.projection_dim``), laid out as
    transformers' ``CLIPVisionModelOutput``: ``image_embeds`` first (what the ``image-feature-extraction`` pipeline
    returns), then the token states, the pooled pre-projection features and the optional trajectory / attentions."""

    image_embeds: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class RaptorModel(RaptorPreTrainedModel):
    """Bare Raptor: token states and the pooled features; with an embedding projection (``config.projection_dim``,
    a CLIP / AIMv2 teacher's) also ``image_embeds``, as the teacher's ``*WithProjection`` class. No classifier."""

    # a classifier folder's timm head (timm key head.*), skipped when a base model loads it
    _keys_to_ignore_on_load_unexpected = [r"^raptor\.head\."]

    def __init__(self, config: RaptorConfig) -> None:
        super().__init__(config)
        self.raptor = self._build_raptor(num_classes=config.projection_dim or 0)
        self.step = RaptorStep()
        self.post_init()

    @property
    def num_saved_classes(self) -> int:
        return self.config.projection_dim or 0

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
            output_attentions: return the L per-step attention probabilities (batch, heads, tokens, tokens).
        """
        output_hidden_states, output_attentions, return_dict = self._resolve_flags(
            output_hidden_states, output_attentions, return_dict)
        last, hidden_states, attentions = self._trajectory(pixel_values, output_hidden_states, output_attentions)
        core = self.raptor
        sequence_output = core.finish(last)
        if getattr(core, "global_pool", None) == "map":  # attention pooling (SigLIP): the pooled embedding
            pooled_output = core.forward_head(sequence_output, pre_logits=True)
        elif getattr(core, "cls_token", None) is not None:
            pooled_output = sequence_output[:, 0]
        else:
            pooled_output = sequence_output[:, core.num_prefix_tokens:].mean(dim=1)
        image_embeds = core.forward_head(sequence_output) if self.config.projection_dim else None
        if self.config.last_hidden_state == "pre_norm":
            sequence_output = last
        if image_embeds is not None:
            output = RaptorEmbeddingOutput(
                image_embeds=image_embeds, last_hidden_state=sequence_output, pooler_output=pooled_output,
                hidden_states=hidden_states, attentions=attentions)
            return output if return_dict else output.to_tuple()
        if not return_dict:
            return tuple(v for v in (sequence_output, pooled_output, hidden_states, attentions) if v is not None)
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output,
                                          hidden_states=hidden_states, attentions=attentions)


class RaptorForImageClassification(RaptorPreTrainedModel):
    """A ``RaptorModel`` with timm's classifier on top; pooling is ``config.global_pool`` (token, avg or cls_avg)."""

    def __init__(self, config: RaptorConfig) -> None:
        if config.projection_dim:
            raise ValueError(
                f"This Raptor's head is a {config.projection_dim}-d image-embedding projection (its teacher's), not a "
                "classifier: load it with AutoModel (image_embeds) or pipeline('image-feature-extraction').")
        super().__init__(config)
        self.num_labels = config.num_labels
        self.raptor = RaptorModel(config)
        head_width = self.raptor.raptor.head_hidden_size
        self.head = nn.Linear(head_width, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @property
    def num_saved_classes(self) -> int:
        return self.num_labels

    def get_output_embeddings(self) -> None:
        return None

    def to_timm(self) -> RaptorMixin:
        """A timm Raptor with this classifier's head, built on the meta device and given this model's tensors."""
        with torch.device("meta"):
            model = raptor_from_model_args(self.config.timm_model_args(num_classes=self.num_labels))
        model.load_state_dict(self._timm_state_dict(self.state_dict()), strict=True, assign=True)
        core = self.core
        model.raptor_meta = dict(core.raptor_meta)
        if getattr(core, "pretrained_cfg", None):
            model.pretrained_cfg = dict(core.pretrained_cfg)
        model.train(self.training)
        return model

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
            output_attentions: return the L per-step attention probabilities (batch, heads, tokens, tokens).
        """
        _, _, return_dict = self._resolve_flags(output_hidden_states, output_attentions, return_dict)
        outputs = self.raptor(pixel_values, output_hidden_states=output_hidden_states,
                              output_attentions=output_attentions, return_dict=True)
        logits = self.head(self.core.forward_head(outputs.last_hidden_state, pre_logits=True))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        if not return_dict:
            return tuple(v for v in (loss, logits, outputs.hidden_states, outputs.attentions) if v is not None)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class RaptorBackbone(BackboneMixin, RaptorPreTrainedModel):
    """Raptor as a backbone: feature maps of the selected unrolled states (``stem``, ``stage1`` .. ``stageL``)."""

    _keys_to_ignore_on_load_unexpected = [r"^raptor\.head\."]

    def __init__(self, config: RaptorConfig) -> None:
        super().__init__(config)
        self.raptor = self._build_raptor()
        self.step = RaptorStep()
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
            output_attentions: also return the L per-step attention probabilities.
        """
        output_hidden_states, output_attentions, return_dict = self._resolve_flags(
            output_hidden_states, output_attentions, return_dict)
        _, hidden_states, attentions = self._trajectory(pixel_values, True, output_attentions)
        batch_size, _, height, width = pixel_values.shape
        grid = feature_grid(self.raptor, height, width)
        feature_maps = ()
        for stage, state in zip(self.stage_names, hidden_states):
            if stage not in self.out_features:
                continue
            if self.config.apply_layernorm:
                state = final_norm(self.raptor)(state)
            if self.config.reshape_hidden_states:
                state = state[:, self.raptor.num_prefix_tokens:]
                state = state.reshape(batch_size, *grid, -1).permute(0, 3, 1, 2).contiguous()
            feature_maps += (state,)
        hidden_states = hidden_states if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (feature_maps, hidden_states, attentions) if v is not None)
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states, attentions=attentions)


def register_raptor_auto_classes() -> None:
    """Register "raptor" with AutoConfig, AutoModel, AutoModelForImageClassification and AutoBackbone, and the
    ``k <-> "raptor." + k`` checkpoint key mapping. Idempotent (safe to call on every ``import raptor_zoo``)."""
    AutoConfig.register(RaptorConfig.model_type, RaptorConfig, exist_ok=True)
    AutoModel.register(RaptorConfig, RaptorModel, exist_ok=True)
    AutoModelForImageClassification.register(RaptorConfig, RaptorForImageClassification, exist_ok=True)
    AutoBackbone.register(RaptorConfig, RaptorBackbone, exist_ok=True)
    register_checkpoint_conversion_mapping(
        RaptorConfig.model_type, [PrefixChange(prefix_to_add=RaptorPreTrainedModel.base_model_prefix)], overwrite=True)
