"""raptor_zoo: Raptors, block-recurrent surrogates of Vision Transformers (Jacobs et al., arXiv 2512.19941).

Importing the package registers the Raptor architectures (and the embedded digits teacher) in timm's registry, the
transformers teachers' architecture (``hf_convert``) and the Raptor classes with transformers' Auto classes. The
rest of the top-level API (teachers, the Hub folder, the zoo) is imported on first use: those modules pull in
``datasets`` and the model-card machinery, which registering needs nothing of.
"""
import importlib
from typing import Any

from .hf_convert.clip import swap_vision_tower  # hf_convert registers the transformers teachers' timm architecture
from .models import *  # noqa: F401,F403  (registers timm entrypoints)
from .models.raptor_base import RaptorMixin
from .models.raptor_vit import RaptorVisionTransformer
from .models.services import SERVICES, provide
from .version import __version__

_LAZY_ATTRIBUTES = {
    "Teacher": ("teachers", "Teacher"),
    "load_teacher": ("teachers", "load_teacher"),
    "from_teacher": ("build", "from_teacher"),
    "from_pretrained": ("hub", "load_pretrained"),
    "push_to_hub": ("hub", "push_to_hub"),
    "save_pretrained": ("hub", "save_pretrained"),
    "list_models": ("zoo", "list_models"),
}
"""Top-level name -> (submodule, attribute), imported when first used."""
_SERVICE_PROVIDERS = {"save_pretrained": "hub", "push_to_hub": "hub", "load_pretrained": "hub",
                      "from_teacher": "build"}
"""What the model classes' methods hand up (models/services.py) -> the module above them that does it."""

__all__ = ["RaptorMixin", "RaptorVisionTransformer", "swap_vision_tower", "__version__", *_LAZY_ATTRIBUTES]


def _on_first_use(module_name: str, attribute: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(f".{module_name}", __name__), attribute)(*args, **kwargs)

    call.__name__ = call.__qualname__ = attribute
    return call


for _service in SERVICES:
    provide(_service, _on_first_use(_SERVICE_PROVIDERS[_service], _service))


def __getattr__(name: str) -> Any:
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY_ATTRIBUTES[name]
    value = getattr(importlib.import_module(f".{module_name}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_ATTRIBUTES})
