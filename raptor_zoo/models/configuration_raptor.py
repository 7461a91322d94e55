"""Raptor configuration for transformers (model_type "raptor").

One ``config.json`` serves timm, transformers and raptor_zoo (docs/design.md §6). ``RaptorConfig`` is its schema:

* transformers names for the architecture (``hidden_size``, ``num_attention_heads``, ``image_size``, ...,
  ``block_schedule``) mirror arguments of ``RaptorVisionTransformer``; :meth:`RaptorConfig.timm_model_args`
  merges them with the remaining timm arguments kept in ``model_args``;
* ``to_dict()`` writes the timm keys (``architecture``, ``num_classes``, ``num_features``, ``global_pool``,
  ``model_args`` complete, ``pretrained_cfg``, ``label_names``) next to the transformers keys, so that
  ``timm.create_model("hf-hub:org/name")`` reads the same file;
* provenance: ``teacher``, ``teacher_revision``, ``schedule_source``, ``phase_metric``, ``phase_boundaries`` and
  anything else ``from_teacher`` recorded in ``raptor_meta``.

Backbone stages are the L + 1 unrolled states: ``stem`` (the embeddings) and ``stage1`` .. ``stageL``.
"""
from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.backbone_utils import BackboneConfigMixin
from transformers.configuration_utils import PreTrainedConfig

from .raptor_vit import convert_vit_args

__all__ = ["RaptorConfig", "MIRRORED_MODEL_ARGS"]

# RaptorConfig field -> RaptorVisionTransformer argument it mirrors, with the constructor's default
MIRRORED_MODEL_ARGS: dict[str, tuple[str, Any]] = {
    "hidden_size": ("embed_dim", 768),
    "num_attention_heads": ("num_heads", 12),
    "mlp_ratio": ("mlp_ratio", 4.0),
    "image_size": ("img_size", 224),
    "patch_size": ("patch_size", 16),
    "num_channels": ("in_chans", 3),
    "num_register_tokens": ("reg_tokens", 0),
    "block_schedule": ("block_schedule", (7, 5)),
    "block_type": ("block_type", "teacher"),
    "global_pool": ("global_pool", "token"),
    "drop_path_rate": ("drop_path_rate", 0.0),
}
_GLOBAL_POOLS = ("", "token", "avg", "avgmax", "max", "cls_avg")


def _comparable(value: Any) -> Any:
    return [_comparable(v) for v in value] if isinstance(value, (list, tuple)) else value


@strict
class RaptorConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a Raptor: k unique ViT blocks applied recurrently on ``block_schedule`` (L = sum of it).

    Args:
        hidden_size (`int`, defaults to 768): token width D (timm ``embed_dim``).
        num_attention_heads (`int`, defaults to 12): attention heads (timm ``num_heads``).
        mlp_ratio (`float`, defaults to 4.0): MLP hidden width / D.
        image_size (`int` or `(int, int)`, defaults to 224): input size (timm ``img_size``).
        patch_size (`int`, defaults to 16): patch size.
        num_channels (`int`, defaults to 3): input channels (timm ``in_chans``).
        num_register_tokens (`int`, defaults to 0): register tokens (timm ``reg_tokens``).
        block_schedule (`list[int]`, defaults to `[7, 5]`): repeat count of each unique block; L = sum.
        block_type (`str`, defaults to "teacher"): "teacher" (the teacher's block) or "swiglu" (the paper's).
        global_pool (`str`, defaults to "token"): classification pooling, as timm's: "token" (cls), "avg" (mean
            patch token) or "cls_avg" (concat of both, the DINOv2 linear-probe head).
        drop_path_rate (`float`, defaults to 0.0): stochastic depth, ramped over the L unrolled steps.
        model_args (`dict`, *optional*): the other ``RaptorVisionTransformer`` arguments (``init_values``,
            ``no_embed_class``, ``norm_eps``, ``t_scale``, ...). Mirrored keys may appear; they must agree.
        architecture (`str`, defaults to "raptor_vit"): the timm architecture config.json names.
        pretrained_cfg (`dict`, *optional*): timm's data / weights metadata (mean, std, input_size, ...).
        apply_layernorm (`bool`, defaults to `True`): backbone feature maps pass through the final norm.
        reshape_hidden_states (`bool`, defaults to `True`): backbone feature maps as (B, C, H/p, W/p).
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal init of linear layers.
        projection_dim (`int`, *optional*): width of an image-embedding projection head (a CLIP / AIMv2
            ``visual_projection``). A Raptor with one is an embedding model, as its teacher: ``RaptorModel`` returns
            ``image_embeds``, and it has no labels (``num_labels`` 0).
        last_hidden_state (`str`, defaults to "normed"): what ``RaptorModel`` returns as ``last_hidden_state``, the
            convention of the teacher's transformers class: "normed" (the final norm applied to every token, as
            DINOv2, SigLIP and AIMv2) or "pre_norm" (the last block's output, as CLIP's vision tower).
        teacher_image_processor (`dict`, *optional*): the teacher's own transformers image processor (its
            ``to_dict()``), which ``RaptorImageProcessor`` runs so that images are prepared exactly as the teacher's.
        teacher, teacher_revision, schedule_source, phase_metric, phase_boundaries, raptor_meta: provenance.
        out_features / out_indices: backbone stages among ``stem``, ``stage1`` .. ``stageL``.

    Example:

    ```python
    >>> import raptor_zoo  # registers "raptor" with the Auto classes
    >>> from raptor_zoo.models.configuration_raptor import RaptorConfig
    >>> config = RaptorConfig(hidden_size=64, num_attention_heads=2, block_schedule=[2, 1], image_size=28,
    ...                       patch_size=14)
    >>> config.num_hidden_layers
    3
    ```
    """

    model_type = "raptor"

    hidden_size: int | None = None
    num_attention_heads: int | None = None
    mlp_ratio: float | int | None = None
    image_size: int | list[int] | tuple[int, ...] | None = None
    patch_size: int | list[int] | tuple[int, ...] | None = None
    num_channels: int | None = None
    num_register_tokens: int | None = None
    block_schedule: list[int] | tuple[int, ...] | None = None
    block_type: str | None = None
    global_pool: str | None = None
    drop_path_rate: float | int | None = None
    model_args: dict[str, Any] | None = None
    architecture: str = "raptor_vit"
    pretrained_cfg: dict[str, Any] | None = None
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True
    initializer_range: float = 0.02
    projection_dim: int | None = None
    last_hidden_state: str = "normed"
    teacher_image_processor: dict[str, Any] | None = None
    teacher: str | None = None
    teacher_revision: str | None = None
    schedule_source: str | None = None
    phase_metric: str | None = None
    phase_boundaries: list[int] | tuple[int, ...] | None = None
    raptor_meta: dict[str, Any] | None = None
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        extra_args = dict(self.model_args or {})
        for field_name, (arg_name, default) in MIRRORED_MODEL_ARGS.items():
            given = getattr(self, field_name)
            in_args = extra_args.pop(arg_name, None)
            if given is not None and in_args is not None and _comparable(given) != _comparable(in_args):
                raise ValueError(
                    f"RaptorConfig got {field_name}={given!r} but model_args[{arg_name!r}]={in_args!r}; "
                    f"they describe the same setting, pass one of them (or equal values).")
            value = given if given is not None else in_args if in_args is not None else default
            setattr(self, field_name, list(value) if isinstance(value, tuple) else value)
        if self.projection_dim:  # an embedding head: its outputs are not classes
            kwargs["num_labels"] = 0
        elif "num_labels" not in kwargs and self.id2label is None and extra_args.get("num_classes") is not None:
            kwargs["num_labels"] = extra_args["num_classes"]
        extra_args.pop("num_classes", None)
        extra_args.pop("depth", None)  # implied by block_schedule
        self.model_args = extra_args
        self._check_architecture()
        if "num_hidden_layers" in kwargs and kwargs.pop("num_hidden_layers") != self.num_hidden_layers:
            raise ValueError(
                f"num_hidden_layers is the sum of block_schedule {self.block_schedule} ({self.num_hidden_layers}); "
                "set block_schedule instead.")
        self.stage_names = ["stem"] + [f"stage{idx}" for idx in range(1, self.num_hidden_layers + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None))
        for derived in ("num_features", "stage_names"):
            kwargs.pop(derived, None)
        super().__post_init__(**kwargs)

    def _check_architecture(self) -> None:
        schedule = self.block_schedule
        if not schedule or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in schedule):
            raise ValueError(f"block_schedule must be a non-empty list of repeat counts >= 1, got {schedule!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}.")
        if self.global_pool not in _GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {_GLOBAL_POOLS}, got {self.global_pool!r}.")
        if self.block_type not in ("teacher", "swiglu"):
            raise ValueError(f"block_type must be 'teacher' or 'swiglu', got {self.block_type!r}.")
        if self.last_hidden_state not in ("normed", "pre_norm"):
            raise ValueError(f"last_hidden_state must be 'normed' or 'pre_norm', got {self.last_hidden_state!r}.")

    @property
    def num_hidden_layers(self) -> int:
        """L, the number of block applications (sum of block_schedule)."""
        return sum(self.block_schedule)

    @property
    def k(self) -> int:
        """Number of unique blocks."""
        return len(self.block_schedule)

    @property
    def head_width(self) -> int:
        """Outputs of the timm head this config describes: the embedding projection's width, else the classes."""
        return self.projection_dim or self.num_labels

    @property
    def relax_rank(self) -> int:
        """Rank of the per-step low-rank adapters (relaxation); 0 for a pure Raptor."""
        return int((self.model_args or {}).get("relax_rank", 0) or 0)

    def timm_model_args(self, num_classes: int | None = None) -> dict[str, Any]:
        """The Raptor's complete JSON-able description (``num_classes`` defaults to ``head_width``): its teacher
        architecture (``teacher_arch``, ``teacher_args``), schedule and options, as ``raptor_timm.create_raptor``
        takes them. A config built from RaptorConfig's own fields (or stored with the flat schema of earlier folders)
        describes a timm VisionTransformer and is converted (``raptor_vit.convert_vit_args``)."""
        args = dict(self.model_args or {})
        num_classes = self.head_width if num_classes is None else num_classes
        if "teacher_arch" not in args:
            for field_name, (arg_name, _) in MIRRORED_MODEL_ARGS.items():
                value = getattr(self, field_name)
                args[arg_name] = list(value) if isinstance(value, tuple) else value
            return dict(convert_vit_args(dict(args, num_classes=num_classes)), num_classes=num_classes)
        args.update(block_schedule=list(self.block_schedule), drop_path_rate=self.drop_path_rate,
                    num_classes=num_classes)
        if self.block_type != "teacher":
            args["block_type"] = self.block_type
        if self.global_pool == "cls_avg":
            args["global_pool"] = "cls_avg"
        return args

    def _timm_pretrained_cfg(self, num_classes: int) -> dict[str, Any]:
        """timm's pretrained_cfg: the stored one, completed for configs built in transformers; input size and
        classes always follow this config."""
        size = [self.image_size] * 2 if isinstance(self.image_size, int) else list(self.image_size)
        cfg = {"first_conv": "patch_embed.proj", "classifier": "head", "hf_hub_filename": "model.safetensors",
               "fixed_input_size": not (self.model_args or {}).get("dynamic_img_size", False)}
        cfg.update(self.pretrained_cfg or {})
        cfg.update(input_size=[self.num_channels, *size], num_classes=num_classes)
        return cfg

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> RaptorConfig:
        """Read a config.json written by raptor_zoo or transformers; timm's ``num_classes`` / ``label_names``
        give ``num_labels`` / ``id2label`` unless those are passed or stored (a headless save of a labelled
        config stores them)."""
        config_dict = dict(config_dict)
        label_names = config_dict.pop("label_names", None)
        num_classes = config_dict.pop("num_classes", None)
        if not {"num_labels", "id2label"} & (set(kwargs) | set(config_dict)):
            if label_names:
                kwargs["id2label"] = dict(enumerate(label_names))
                if len(set(label_names)) == len(label_names):
                    kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
            elif num_classes is not None:
                kwargs["num_labels"] = num_classes
        return super().from_dict(config_dict, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """transformers keys plus timm's (architecture, num_classes, num_features, global_pool, model_args,
        pretrained_cfg, label_names), so that one config.json serves both libraries."""
        output = super().to_dict()
        num_classes = output.pop("_saved_num_classes", self.head_width)
        output["num_classes"] = num_classes
        output["num_features"] = self.hidden_size
        output["model_args"] = self.timm_model_args(num_classes=num_classes)
        output["pretrained_cfg"] = self._timm_pretrained_cfg(num_classes)
        id2label = output.pop("id2label", None) or {}
        label2id = output.pop("label2id", None)
        if num_classes != self.head_width:
            # a headless save of a labelled config: timm reads no head, transformers keeps the labels, so a
            # classifier loaded from the folder builds (and reports as missing) a head of that size
            output.update(num_labels=self.num_labels, id2label=id2label, label2id=label2id)
        names = [id2label[i] for i in sorted(id2label)]
        if num_classes and len(names) == num_classes and names != [f"LABEL_{i}" for i in range(num_classes)]:
            output["label_names"] = names
        return output

