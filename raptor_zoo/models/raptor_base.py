""" What every Raptor shares, whatever its family: the recurrent stack, step loop, schedule and teacher init

`make_recurrent` turns a model of any supported timm family (its blocks chosen) into a Raptor in place;
`RaptorMixin` gives the family class the Raptor surface: `block_schedule`, `phase_boundaries`,
`step_block_indices`, `forward_steps`, anytime `num_steps`, `from_teacher`-time initialisation of the shared
blocks and of the relaxation adapters. The family's own forward code runs unchanged on the `RecurrentBlocks`.
"""
import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.layers import calculate_drop_path_rates

from .families import (
    FAMILIES,
    FamilyAdapter,
    TokenLayout,
    family_of,
    in_chans_of,
    native_img_size,
    patch_size_of,
    relax_layers,
    residual_branches,
)
from .hub_mixin import RaptorHubMixin
from .recurrent import (
    RELAX_TARGETS,
    CapturedBlockInputs,
    DepthScale,
    RecurrentBlocks,
    StepAdapters,
    StepContext,
    StepDropPath,
    StepLinear,
    StepView,
)
from .schedule import middle_layers, phase_boundaries, validate_block_schedule

__all__ = [
    "RaptorMixin", "make_recurrent", "raptorize", "raptor_class", "check_relax_args", "BlockType", "InitMode",
    "RelaxInit",
]

BlockType = Literal["teacher", "swiglu"]
InitMode = Literal["middle", "first", "mean", "random"]
RelaxInit = Literal["svd", "zeros"]


def check_relax_args(relax_rank: int, relax_targets: Sequence[str]) -> tuple[str, ...]:
    if isinstance(relax_rank, bool) or not isinstance(relax_rank, int) or relax_rank < 0:
        raise ValueError(f"relax_rank must be an int >= 0 (0 = pure Raptor), got {relax_rank!r}.")
    if isinstance(relax_targets, str):
        raise TypeError(f"relax_targets must be a sequence of layer names, e.g. {RELAX_TARGETS}, not a string.")
    targets = tuple(relax_targets)
    unknown = [name for name in targets if name not in RELAX_TARGETS]
    if unknown or not targets or len(set(targets)) != len(targets):
        raise ValueError(
            f"relax_targets must be a non-empty set of distinct names from {RELAX_TARGETS}, got {targets}.")
    return tuple(name for name in RELAX_TARGETS if name in targets)  # canonical order


def _require_family(model: nn.Module) -> FamilyAdapter:
    family = family_of(model)
    if family is None:
        supported = ", ".join(name for family in FAMILIES for name in family.class_names if not name.startswith("Raptor"))
        raise TypeError(f"{type(model).__name__} is not a supported ViT family; raptor_zoo supports timm {supported} "
                        "models (see docs/teachers.md).")
    return family


def _embed_dim(model: nn.Module, block: nn.Module) -> int:
    dim = getattr(model, "embed_dim", None)
    if isinstance(dim, int):
        return dim
    norm = getattr(block, "norm1", None)
    if norm is not None and hasattr(norm, "normalized_shape"):
        return int(norm.normalized_shape[0])
    return int(model.num_features)


def _prepare_shared_block(block: nn.Module, dim: int, t_scale: bool) -> None:
    """Give a block its step context, StepDropPath slots on its residual branches and (t_scale) depth gates."""
    context = StepContext()
    block.step_context = context
    branches = residual_branches(block)
    for path, branch_ids in branches:
        parent_path, _, name = path.rpartition(".")
        parent = block.get_submodule(parent_path) if parent_path else block
        setattr(parent, name, StepDropPath(context, branch_ids))
    num_gains = max(b for _, ids in branches for b in ids) + 2
    param = next(block.parameters())
    block.depth_scale = DepthScale(dim, num_gains=num_gains, device=param.device, dtype=param.dtype) if t_scale else None


def make_recurrent(
        model: nn.Module,
        blocks: Sequence[nn.Module],
        block_schedule: Sequence[int],
        t_scale: bool = True,
        drop_path_rate: float = 0.,
        relax_rank: int = 0,
        relax_targets: Sequence[str] = RELAX_TARGETS,
) -> None:
    """Replace `model.blocks` by a RecurrentBlocks of `blocks` (shared, one per phase) on `block_schedule`, in place.

    Each shared block gets StepDropPath slots and (t_scale) zero-initialised depth gates; drop path ramps over the
    L steps; relax_rank > 0 adds `model.relax` (one StepAdapters per step, LoRA-initialised).
    """
    family = _require_family(model)
    relax_targets = check_relax_args(relax_rank, relax_targets)
    schedule = tuple(int(n) for n in block_schedule)
    depth = sum(schedule)
    dim = _embed_dim(model, blocks[0])
    for block in blocks:
        _prepare_shared_block(block, dim, t_scale)
    container = RecurrentBlocks(blocks, schedule, calculate_drop_path_rates(drop_path_rate, depth))
    model.blocks = container
    model.relax = None
    if relax_rank:
        per_block_layers = []
        for block in blocks:
            layers = relax_layers(block, relax_targets)
            for key, path in layers.items():
                StepLinear.convert(block.get_submodule(path), block.step_context, key)
            per_block_layers.append({key: block.get_submodule(path) for key, path in layers.items()})
        param = next(blocks[0].parameters())
        model.relax = nn.ModuleList([
            StepAdapters(per_block_layers[j], relax_rank, device=param.device, dtype=param.dtype)
            for j in container.step_block_indices])
        container.__dict__["relax"] = model.relax
    feature_info = getattr(model, "feature_info", None)
    if isinstance(feature_info, list) and feature_info and all("module" in info for info in feature_info):
        template = dict(feature_info[0])
        model.feature_info = [dict(template, module=f"blocks.{j}") for j in container.step_block_indices]
    model.t_scale = t_scale
    model.drop_path_rate = drop_path_rate
    model.relax_rank = relax_rank
    model.relax_targets = relax_targets if relax_rank else tuple(RELAX_TARGETS)
    model.family_name = family.name


def raptor_class(model_cls: type) -> type:
    """The Raptor class of a timm model class: its family's (RaptorEva for Eva, ...), or a Raptor subclass of its own
    for a subclass of a family class (made once, named Raptor<Class>)."""
    if issubclass(model_cls, RaptorMixin):
        return model_cls
    if model_cls not in RaptorMixin._raptor_classes:
        family_base = next((base for base in model_cls.__mro__[1:] if base in RaptorMixin._raptor_classes), None)
        if family_base is None:
            raise TypeError(f"{model_cls.__name__} is not a model class of a supported timm ViT family.")
        name = f"Raptor{model_cls.__name__}"
        # the family Raptor's own methods first (e.g. RaptorVisionTransformer's cls_avg pooling), then the subclass's
        RaptorMixin._raptor_classes[model_cls] = type(
            name, (RaptorMixin._raptor_classes[family_base], model_cls),
            {"__module__": model_cls.__module__, "__doc__": f"Raptor of {model_cls.__name__}."})
    return RaptorMixin._raptor_classes[model_cls]


def _check_patch_grid(model: nn.Module) -> None:
    """Refuse an image size the patches do not tile (timm would drop the last pixels silently)."""
    embedding = getattr(model, "patch_embed", None)
    if embedding is None or getattr(embedding, "dynamic_img_pad", False):
        return
    size, patch = native_img_size(model), getattr(embedding, "patch_size", None)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch or size)
    if any(s % p for s, p in zip(size, patch)):
        raise ValueError(
            f"img_size {size} is not divisible by patch_size {patch}; use a multiple of the patch size "
            f"(e.g. {tuple(s // p * p for s, p in zip(size, patch))}) or dynamic_img_pad=True.")


def raptorize(
        model: nn.Module,
        block_schedule: Sequence[int],
        unique_layers: Sequence[int] | None = None,
        t_scale: bool = True,
        drop_path_rate: float = 0.,
        relax_rank: int = 0,
        relax_targets: Sequence[str] = RELAX_TARGETS,
) -> "RaptorMixin":
    """Turn a timm model of depth L into its family's Raptor in place (the one conversion every Raptor goes through):
    layer `unique_layers[j]` (default: the middle layer of phase j) becomes shared block j, applied on
    `block_schedule`; the model's class becomes its family's Raptor class."""
    _require_family(model)
    _check_patch_grid(model)
    depth = len(model.blocks)
    schedule = validate_block_schedule(block_schedule, depth)
    unique_layers = list(unique_layers) if unique_layers is not None else middle_layers(schedule)
    if len(unique_layers) != len(schedule) or not all(0 <= i < depth for i in unique_layers):
        raise ValueError(f"unique_layers {list(unique_layers)} must name one teacher layer (0..{depth - 1}) per "
                         f"block of block_schedule {schedule}.")
    blocks = [model.blocks[i] for i in unique_layers]
    model.blocks = nn.ModuleList()
    if not isinstance(model, RaptorMixin):
        model.__class__ = raptor_class(type(model))
    make_recurrent(model, blocks, schedule, t_scale=t_scale, drop_path_rate=drop_path_rate, relax_rank=relax_rank,
                   relax_targets=relax_targets)
    model.raptor_meta = getattr(model, "raptor_meta", None) or {}
    return model


class RaptorMixin(RaptorHubMixin):
    """The Raptor surface on top of a family's model class whose `blocks` is a RecurrentBlocks (and the model-level
    save_pretrained / push_to_hub / from_pretrained of RaptorHubMixin).

    Constructed directly, a Raptor class builds its family's model at depth L = sum(block_schedule) from the family's
    own keyword arguments and converts it (:func:`raptorize`), as every Raptor is built; its `model_args` (what
    config.json stores) name the family class and those arguments.
    """
    blocks: RecurrentBlocks
    model_args: dict[str, Any] | None
    _raptor_classes: dict[type, type] = {}  # family model class -> its Raptor class (every subclass registers)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        family_base = next((base for base in cls.__bases__ if not issubclass(base, RaptorMixin)), None)
        if family_base is not None:
            RaptorMixin._raptor_classes.setdefault(family_base, cls)

    def __init__(
            self,
            block_schedule: Sequence[int] = (7, 5),
            unique_layers: Sequence[int] | None = None,
            t_scale: bool = True,
            drop_path_rate: float = 0.,
            relax_rank: int = 0,
            relax_targets: Sequence[str] = RELAX_TARGETS,
            **family_kwargs: Any,
    ) -> None:
        """
        Args:
            block_schedule: repeat count of each unique block; its length is k, its sum the depth L.
            unique_layers: the layer (0-based, of the L the family builds) each shared block is taken from; default
                the middle layer of each phase (it matters where layers differ, e.g. SAM's global-attention layers).
            t_scale: depth-scaling gates fed the absolute layer index (zero-initialised: identity at start).
            drop_path_rate: stochastic depth, ramped linearly over the L unrolled applications.
            relax_rank: rank r of per-step low-rank adapters (0 = pure Raptor).
            relax_targets: linear layers the adapters relax, from ('qkv', 'proj', 'fc1', 'fc2').
            **family_kwargs: the family model's own arguments (img_size, embed_dim, num_heads, ...), except depth.
        """
        schedule = validate_block_schedule(block_schedule, family_kwargs.pop("depth", None))
        relax_targets = check_relax_args(relax_rank, relax_targets)
        super().__init__(depth=sum(schedule), **family_kwargs)
        raptorize(self, schedule, unique_layers, t_scale=t_scale, drop_path_rate=drop_path_rate, relax_rank=relax_rank,
                  relax_targets=relax_targets)

    # ------------------------------------------------------------------ schedule

    @property
    def block_schedule(self) -> tuple[int, ...]:
        """Repeat count of each shared block (after pruning, possibly shorter than the teacher's)."""
        return self.blocks.block_schedule

    @property
    def depth(self) -> int:
        """L: block applications per forward."""
        return self.blocks.depth

    @depth.setter
    def depth(self, value: int) -> None:
        if value != self.blocks.depth:
            raise AttributeError("a Raptor's depth is the sum of its block_schedule; prune or rebuild to change it.")

    @property
    def step_block_indices(self) -> list[int]:
        """Index of the shared block applied at each of the L steps."""
        return self.blocks.step_block_indices

    @property
    def step_drop_path(self) -> list[float]:
        """Stochastic-depth rate of each of the L steps."""
        return self.blocks.step_drop_path

    @property
    def unique_blocks(self) -> list[nn.Module]:
        """The k shared blocks."""
        return self.blocks.unique_blocks

    @property
    def num_unique_blocks(self) -> int:
        """k."""
        return len(self.blocks.unique_blocks)

    @property
    def phase_boundaries(self) -> tuple[int, ...]:
        """Cumulative phase ends (0, b_1, ..., L): phase j produces layers b_{j-1}+1 .. b_j."""
        return phase_boundaries(self.block_schedule)

    @property
    def family(self) -> FamilyAdapter:
        return _require_family(self)

    @property
    def token_layout(self) -> TokenLayout:
        """Class / register tokens of the block stack's states."""
        return self.family.token_layout(self)

    # ------------------------------------------------------------------ steps

    def _check_num_steps(self, num_steps: int | None) -> int:
        if not torch.jit.is_scripting():
            if isinstance(num_steps, torch.fx.Proxy):
                # symbolic tracing without concrete_args={'num_steps': m} traces the full L-step graph
                return self.depth
        if num_steps is None:
            return self.depth
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= self.depth:
            raise ValueError(f"num_steps={num_steps!r} is out of range; use 1 <= num_steps <= {self.depth}.")
        return num_steps

    @contextlib.contextmanager
    def limit_steps(self, num_steps: int | None) -> Iterator[None]:
        """Within the block, the family's forward runs only the first `num_steps` steps (anytime inference)."""
        stop = self._check_num_steps(num_steps)
        previous = self.blocks.num_steps_limit
        if num_steps is not None and stop < self.depth:
            self.blocks.num_steps_limit = stop
        try:
            yield
        finally:
            self.blocks.num_steps_limit = previous

    def forward_features(self, x: torch.Tensor, *args: Any, num_steps: int | None = None, **kwargs: Any) -> Any:
        """The family's forward_features; `num_steps` < L stops after that many block applications."""
        with self.limit_steps(num_steps):
            return super().forward_features(x, *args, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, num_steps: int | None = None, **kwargs: Any) -> Any:
        """The family's forward; `num_steps` < L stops early (anytime inference), then final norm and head."""
        with self.limit_steps(num_steps):
            return super().forward(x, *args, **kwargs)

    def block_inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, list[tuple[tuple[Any, ...], dict[str, Any]]]]:
        """x_0 and the extra arguments the family's forward passes at each step, read off the family's own
        forward_features (the step views record instead of computing and stop it after the last step)."""
        container = self.blocks
        container.start_capture()
        try:
            self.forward_features(images)
        except CapturedBlockInputs as captured:
            return captured.state, captured.calls
        finally:
            container.stop_capture()
        raise RuntimeError(f"{type(self).__name__}.forward_features did not call its blocks.")

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """Image -> tokens x_0 [B, N, D], as the family's forward_features computes them before the blocks."""
        return self.family.to_tokens(self.block_inputs(images)[0])

    def _grid_size(self, num_tokens: int) -> tuple[int, int]:
        size, patch = native_img_size(self), patch_size_of(self)
        grid = (size[0] // patch[0], size[1] // patch[1])
        if grid[0] * grid[1] == num_tokens - self.token_layout.num_prefix_tokens:
            return grid
        side = math.isqrt(num_tokens - self.token_layout.num_prefix_tokens)
        return side, side

    def _step_calls(self, x: torch.Tensor) -> list[tuple[tuple[Any, ...], dict[str, Any]]] | None:
        """The family's per-step block arguments for a state like x (RoPE, relative-position bias, grid), read
        off its forward on a blank image of the matching size; None when its blocks take the state alone."""
        if self.family.state_only_blocks:
            return None
        tokens = self.family.to_tokens(x)
        grid = self._grid_size(tokens.shape[1])
        patch = patch_size_of(self)
        blank = tokens.new_zeros(1, in_chans_of(self), grid[0] * patch[0], grid[1] * patch[1])
        with self.limit_steps(None):
            return self.block_inputs(blank)[1]

    def forward_steps(
            self,
            x: torch.Tensor,
            start: int = 0,
            stop: int | None = None,
            attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run unrolled steps start..stop-1 (0-based; step s produces layer t = s + 1) on token state x_start.

        x is [B, N, D] tokens (or the family's own state layout); the result has the same layout.
        """
        stop = self.depth if stop is None else stop
        if not 0 <= start <= stop <= self.depth:
            raise ValueError(f"steps {start}..{stop} are out of range for a Raptor of depth {self.depth}.")
        family = self.family
        as_tokens = family.nhwc_states and x.ndim == 3
        state = family.to_state(x, self._grid_size(x.shape[1])) if as_tokens else x
        calls = self._step_calls(x) if start < stop else None
        for step in range(start, stop):
            args, kwargs = calls[step] if calls is not None else ((), {})
            if attn_mask is not None:
                kwargs = dict(kwargs, attn_mask=attn_mask)
            view = StepView(self.blocks, step)
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                state = torch.utils.checkpoint.checkpoint(view, state, *args, use_reentrant=False, **kwargs)
            else:
                state = view(state, *args, **kwargs)
        return family.to_tokens(state) if as_tokens else state

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """forward_features output from a final block state x_L (final norm; class attention / neck if any)."""
        family = self.family
        if family.nhwc_states and x.ndim == 3:
            x = family.to_state(x, self._grid_size(x.shape[1]))
        return family.finish(self, x)

    def step_adapters(self, step: int) -> dict[str, torch.Tensor] | None:
        """Adapter tensors of unrolled step `step` (0-based); None for a pure Raptor."""
        return None if self.relax is None else self.relax[step]()

    # ------------------------------------------------------------------ initialisation from a teacher

    @torch.no_grad()
    def init_adapters_from_teacher(self, teacher_blocks: Sequence[nn.Module]) -> None:
        """Step l's adapters: rank-r truncated SVD of (teacher layer l's weight - its shared block's weight)."""
        unique = self.unique_blocks
        for step, (j, adapter) in enumerate(zip(self.step_block_indices, self.relax)):
            layers = relax_layers(unique[j], self.relax_targets)
            for key, path in layers.items():
                shared = unique[j].get_submodule(path)._parameters["weight"]
                delta = teacher_blocks[step].get_submodule(path).weight.double() - shared.double()
                u, s, vh = torch.linalg.svd(delta, full_matrices=False)
                root = s[:self.relax_rank].sqrt()
                getattr(adapter, f"{key}_b").copy_(u[:, :self.relax_rank] * root)
                getattr(adapter, f"{key}_a").copy_(root[:, None] * vh[:self.relax_rank])

    @torch.no_grad()
    def _init_block_from_layers(self, index: int, layers: list[nn.Module], init: InitMode) -> None:
        """Initialise shared block `index` from the teacher layers of its phase."""
        if init == "first":
            source = layers[0].state_dict()
        elif init == "middle":
            source = layers[(len(layers) - 1) // 2].state_dict()
        else:
            states = [layer.state_dict() for layer in layers]
            source = {key: torch.stack([state[key].float() for state in states]).mean(0).to(states[0][key].dtype)
                      for key in states[0]}
        missing, unexpected = self.unique_blocks[index].load_state_dict(source, strict=False)
        if unexpected or any(not key.startswith("depth_scale.") for key in missing):
            raise RuntimeError(
                f"teacher block layout does not match the Raptor block: missing {missing}, unexpected {unexpected}")

    def reset_raptor_parameters(self) -> None:
        """Zero the depth gates' last layers and LoRA-initialise the adapters (after a family's weight init)."""
        if not isinstance(self.blocks, RecurrentBlocks):  # the family's init runs before its blocks are shared
            return
        for block in self.unique_blocks:
            if getattr(block, "depth_scale", None) is not None:
                block.depth_scale.reset_parameters()
        for adapter in self.relax or []:
            adapter.reset_parameters()
