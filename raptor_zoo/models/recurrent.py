""" Recurrent block stack: k shared blocks presented as L step views

The one design behind every Raptor (docs/design.md §9). A Raptor is its teacher's own architecture (a timm
VisionTransformer, Eva, Beit, CaiT, ...) whose stack of L blocks is replaced by a `RecurrentBlocks`: it stores the
k shared blocks once (state_dict keys `blocks.{j}.*`, j < k) and presents L step views — `len()` is L, indexing,
slicing and iteration give step views, and calling the container runs every step. So the family's own
`forward_features`, `forward_intermediates`, `prune_intermediate_layers`, RoPE / relative-position / mask plumbing
run unchanged, and every depth-indexed API counts the L unrolled applications.

Step l's view calls its shared block with step l's state:
- depth gates (`t_scale`): `DepthScale` gives one gain per residual branch plus one on the output state; the
  branch gains are applied where the block's residual branches pass their drop-path module (`StepDropPath`
  replaces it, no parameters), the output gain on the block's output;
- stochastic depth: the drop rate of step l (ramped over the L steps), applied by the same `StepDropPath`;
- relaxation (`relax_rank` r > 0): step l's low-rank adapters on the block's linear layers (`StepLinear`:
  W + B_l A_l; parameter names unchanged, adapters in `relax.{l}`).
Which modules are the residual branches and which linear layers relaxation adapts is family knowledge: see
`families.py`.
"""
import math
from collections.abc import Iterator, Sequence
from typing import Any, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import drop_path

__all__ = [
    "RecurrentBlocks", "StepView", "StepDropPath", "StepLinear", "StepAdapters", "DepthScale", "RELAX_TARGETS",
    "CapturedBlockInputs",
]

# linear layers of a block that relaxation (`relax_rank` > 0) can adapt per unrolled step
RELAX_TARGETS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")


class DepthScale(nn.Module):
    """Depth scaling: s = MLP(t) + 1 gives per-channel gains on each residual branch and on the output state.

    t is the absolute index (1..L) of the layer being produced. `num_gains` = residual branches + 1 (3 for a
    pre-norm attention + MLP block). The last layer starts at zero so a fresh Raptor block is exactly the block
    it was initialised from.
    """

    def __init__(self, dim: int, hidden_dim: int = 16, num_gains: int = 3, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_gains = num_gains
        self.fc1 = nn.Linear(1, hidden_dim, **dd)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden_dim, num_gains * dim, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, t: int) -> tuple[torch.Tensor, ...]:
        t_in = torch.full((1,), float(t), device=self.fc1.weight.device, dtype=self.fc1.weight.dtype)
        gains = self.fc2(self.act(self.fc1(t_in))) + 1.
        return gains.chunk(self.num_gains, dim=-1)


class StepState:
    """What step l hands its shared block: branch gains, drop rate and adapter tensors (None = teacher call)."""
    __slots__ = ("gains", "drop_prob", "adapters")

    def __init__(
            self,
            gains: Sequence[torch.Tensor] | None,
            drop_prob: float,
            adapters: dict[str, torch.Tensor] | None,
    ) -> None:
        self.gains = gains
        self.drop_prob = drop_prob
        self.adapters = adapters


class StepContext:
    """The state of the step a shared block is running, read by its StepDropPath and StepLinear modules."""

    def __init__(self) -> None:
        self.state: StepState | None = None
        self.branch_calls: dict[int, int] = {}

    def enter(self, state: StepState) -> None:
        self.state = state
        self.branch_calls = {}

    def exit(self) -> None:
        self.state = None

    def __deepcopy__(self, memo: dict[int, Any]) -> "StepContext":
        return StepContext()


class StepDropPath(nn.Module):
    """A residual branch's drop-path slot: multiplies the branch update by the step's gain, then drops it with the
    step's rate. `branches` lists the branch index of each call within one block call (a block that reuses one
    drop-path module for both branches, as CaiT's, has two)."""

    def __init__(self, context: StepContext, branches: Sequence[int]) -> None:
        super().__init__()
        self.context = context
        self.branches = tuple(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.context.state
        if state is None:
            return x
        call = self.context.branch_calls.get(id(self), 0)
        self.context.branch_calls[id(self)] = call + 1
        if state.gains is not None:
            x = x * state.gains[self.branches[min(call, len(self.branches) - 1)]]
        return drop_path(x, state.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"branches={self.branches}"


class StepLinear(nn.Linear):
    """A shared block's linear layer that computes with W + B_l A_l while step l runs with adapters.

    Parameters keep nn.Linear's names (`weight`, `bias`), so state dicts and teacher weights are unchanged.
    Called as a module it adds the low-rank path (x A^T) B^T; code that reads `.weight` directly (e.g. EVA's
    attention with separate q/v biases) gets the adapted matrix W + B A.
    """
    adapter_key: str
    context: StepContext

    @classmethod
    def convert(cls, linear: nn.Linear, context: StepContext, adapter_key: str) -> "StepLinear":
        """Turn an nn.Linear into a StepLinear in place (its parameters are kept)."""
        if type(linear) is not nn.Linear and not isinstance(linear, StepLinear):
            raise TypeError(f"relaxation adapts nn.Linear layers, not {type(linear).__name__}.")
        linear.__class__ = cls
        linear.context = context
        linear.adapter_key = adapter_key
        return linear

    def _adapter(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        state = self.context.state
        if state is None or state.adapters is None or self.adapter_key + "_a" not in state.adapters:
            return None
        return state.adapters[self.adapter_key + "_a"], state.adapters[self.adapter_key + "_b"]

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        weight = self._parameters["weight"]
        adapter = self._adapter()
        return weight if adapter is None else weight + adapter[1] @ adapter[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self._parameters["weight"], self.bias)
        adapter = self._adapter()
        if adapter is not None:
            out = out + F.linear(F.linear(x, adapter[0]), adapter[1])
        return out


class StepAdapters(nn.Module):
    """Low-rank adapters of one unrolled step: each adapted linear layer computes with W_shared + B A.

    Parameters `{key}_a` [rank, in_features] and `{key}_b` [out_features, rank], one pair per adapted layer (key =
    the relax target, e.g. 'qkv', or target_leaf when a target has several layers, e.g. 'qkv_q_proj'). Biases are
    not adapted. Fresh adapters are LoRA-initialised (B = 0, A kaiming-uniform): the step starts as the shared
    block and A, B still get gradients.
    """

    def __init__(self, layers: dict[str, nn.Linear], rank: int, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.rank = rank
        self.keys = tuple(layers)
        for key, layer in layers.items():
            self.register_parameter(f"{key}_a", nn.Parameter(torch.empty(rank, layer.in_features, **dd)))
            self.register_parameter(f"{key}_b", nn.Parameter(torch.empty(layer.out_features, rank, **dd)))
        for target in RELAX_TARGETS:  # targets left out read as None
            if not any(key == target or key.startswith(target + "_") for key in layers):
                self.register_parameter(f"{target}_a", None)
                self.register_parameter(f"{target}_b", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for key in self.keys:
            a, b = getattr(self, f"{key}_a"), getattr(self, f"{key}_b")
            if a.device.type != "meta":
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                nn.init.zeros_(b)

    def forward(self) -> dict[str, torch.Tensor]:
        """The adapter tensors by name ('qkv_a', 'qkv_b', ...)."""
        return {name: param for name, param in self.named_parameters(recurse=False) if param is not None}


class CapturedBlockInputs(Exception):
    """Raised by a capturing RecurrentBlocks: the input state and the call arguments of every step."""

    def __init__(self, state: torch.Tensor, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
        super().__init__("block inputs captured")
        self.state = state
        self.calls = calls


class StepView:
    """Step l of a RecurrentBlocks: calling it applies the shared block of step l with step l's state."""
    __slots__ = ("container", "step")

    def __init__(self, container: "RecurrentBlocks", step: int) -> None:
        self.container = container
        self.step = step

    @property
    def block(self) -> nn.Module:
        """The shared block this step applies."""
        return self.container.block_of_step(self.step)

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return self.container.run_step(self.step, x, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # attribute reads (blk.attn, blk.norm1, ...) see the shared block of this step
        return getattr(self.container.block_of_step(self.step), name)

    def __repr__(self) -> str:
        return f"StepView(step={self.step}, block={self.container.step_block_indices[self.step]})"


class RecurrentBlocks(nn.Module):
    """k shared blocks applied on `block_schedule`, presented as L step views (`len()` = L).

    The shared blocks are children `0..k-1` (state_dict `blocks.{j}.*`, each stored once); `unique_blocks` lists
    them. `container[l]` / iteration give `StepView`s, `container[:n]` a container of the first n steps (the same
    shared blocks), `container(x, ...)` runs every step.
    """

    def __init__(
            self,
            blocks: Sequence[nn.Module],
            block_schedule: Sequence[int],
            step_drop_path: Sequence[float] | None = None,
            relax: nn.ModuleList | None = None,
    ) -> None:
        super().__init__()
        if len(blocks) != len(block_schedule):
            raise ValueError(f"{len(blocks)} shared blocks for a schedule of length {len(block_schedule)}.")
        for j, block in enumerate(blocks):
            self.add_module(str(j), block)
        self.block_schedule: tuple[int, ...] = tuple(int(n) for n in block_schedule)
        self.step_block_indices: list[int] = [j for j, n in enumerate(self.block_schedule) for _ in range(n)]
        depth = len(self.step_block_indices)
        self.step_drop_path: list[float] = list(step_drop_path) if step_drop_path is not None else [0.] * depth
        if len(self.step_drop_path) < depth:
            raise ValueError(f"step_drop_path has {len(self.step_drop_path)} rates for {depth} steps.")
        self.step_drop_path = self.step_drop_path[:depth]
        # per-step adapters live in the model (`relax.{l}`); the container only reads them
        self.__dict__["relax"] = relax
        self.num_steps_limit: int | None = None
        self.capturing = False

    @property
    def unique_blocks(self) -> list[nn.Module]:
        """The k shared blocks, in schedule order."""
        return list(self._modules.values())

    @property
    def depth(self) -> int:
        """L: the number of block applications of the schedule."""
        return len(self.step_block_indices)

    def block_of_step(self, step: int) -> nn.Module:
        return self._modules[str(self.step_block_indices[step])]

    def __len__(self) -> int:
        return self.depth if self.num_steps_limit is None else self.num_steps_limit

    def __iter__(self) -> Iterator[StepView]:
        return iter([StepView(self, step) for step in range(len(self))])

    def __getitem__(self, index: int | slice) -> Union[StepView, "RecurrentBlocks"]:
        if isinstance(index, slice):
            start, stop, stride = index.indices(len(self))
            if start != 0 or stride != 1:
                raise IndexError(
                    f"a recurrent block stack can only be cut to its first n steps (blocks[:n]), not {index}.")
            return self.truncated(stop)
        num_steps = len(self)
        if not -num_steps <= index < num_steps:
            raise IndexError(f"step {index} is out of range for {num_steps} steps.")
        return StepView(self, index % num_steps)

    def truncated(self, num_steps: int) -> "RecurrentBlocks":
        """A container of the first `num_steps` steps over the same shared blocks (all k are kept)."""
        schedule, remaining = [], num_steps
        for repeats in self.block_schedule:
            schedule.append(min(repeats, remaining))
            remaining -= schedule[-1]
        return RecurrentBlocks(self.unique_blocks, schedule, self.step_drop_path, self.relax)

    def run_step(self, step: int, x: Any, *args: Any, **kwargs: Any) -> Any:
        """Apply step `step`'s shared block to x with its gates, drop rate and adapters."""
        if self.capturing:
            if not self._calls:
                self._captured_state = x
            self._calls.append((args, kwargs))
            if len(self._calls) == len(self):
                raise CapturedBlockInputs(self._captured_state, self._calls)
            return x
        block = self.block_of_step(step)
        gains = block.depth_scale(step + 1) if getattr(block, "depth_scale", None) is not None else None
        adapters = self.relax[step]() if self.relax is not None else None
        context: StepContext = block.step_context
        context.enter(StepState(gains, self.step_drop_path[step], adapters))
        try:
            x = block(x, *args, **kwargs)
        finally:
            context.exit()
        if gains is not None:
            x = x * gains[-1]
        return x

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        for step in range(len(self)):
            x = self.run_step(step, x, *args, **kwargs)
        return x

    def start_capture(self) -> None:
        self.capturing = True
        self._calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self._captured_state = None

    def stop_capture(self) -> None:
        self.capturing = False
        self._calls = []
        self._captured_state = None

    def extra_repr(self) -> str:
        return f"block_schedule={self.block_schedule}, steps={len(self)}"
