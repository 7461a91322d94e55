"""raptor_zoo: Raptors, block-recurrent surrogates of Vision Transformers (Jacobs et al., arXiv 2512.19941).

Importing the package registers the Raptor architectures (and the embedded digits teacher) in timm's registry, the
transformers teachers' architecture (``hf_convert``) and the Raptor classes with transformers' Auto classes. The
rest of the top-level API (teachers, the Hub folder, the zoo) is imported on first use: those modules pull in
``datasets`` and the model-card machinery, which registering needs nothing of.
"""
import importlib
from typing import Any

from .models import *  # noqa: F401,F403  (registers timm entrypoints)
from .models.raptor_base import RaptorMixin
from .models.raptor_timm import raptor_from_teacher as from_teacher
from .models.raptor_vit import RaptorVisionTransformer
from .hf_convert.clip import swap_vision_tower  # hf_convert registers the transformers teachers' timm architecture

__version__ = "0.1.0"

_LAZY_ATTRIBUTES = {
    "Teacher": ("teachers", "Teacher"),
    "load_teacher": ("teachers", "load_teacher"),
    "from_pretrained": ("hub", "load_pretrained"),
    "push_to_hub": ("hub", "push_to_hub"),
    "save_pretrained": ("hub", "save_pretrained"),
    "list_models": ("zoo", "list_models"),
}
"""Top-level name -> (submodule, attribute), imported when first used."""

__all__ = ["RaptorMixin", "RaptorVisionTransformer", "from_teacher", "swap_vision_tower", *_LAZY_ATTRIBUTES]


def __getattr__(name: str) -> Any:
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY_ATTRIBUTES[name]
    value = getattr(importlib.import_module(f".{module_name}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_ATTRIBUTES})
