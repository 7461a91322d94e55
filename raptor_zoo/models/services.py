"""What the model classes hand up to the layers above them.

A Raptor carries methods whose work belongs above ``raptor_zoo/models``: ``save_pretrained`` / ``push_to_hub`` /
``from_pretrained`` (the one writer and reader of the Raptor folder, ``raptor_zoo.hub``) and ``from_teacher``
(loading a teacher and discovering its phases, ``raptor_zoo.build``). ``models/`` never imports those modules; each
registers its functions here when it is imported, and ``import raptor_zoo`` imports them all.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["SERVICES", "provide", "service"]

SERVICES = ("save_pretrained", "push_to_hub", "load_pretrained", "from_teacher")
_providers: dict[str, Callable[..., Any]] = {}


def provide(name: str, function: Callable[..., Any]) -> None:
    """Register the function that performs service ``name`` (called by the module that implements it)."""
    if name not in SERVICES:
        raise ValueError(f"Unknown service {name!r}; the services are {SERVICES}.")
    _providers[name] = function


def service(name: str) -> Callable[..., Any]:
    """The function registered for ``name``; a RuntimeError saying what to import when none is."""
    if name not in _providers:
        raise RuntimeError(f"{name} is provided by the raptor_zoo package: `import raptor_zoo` (it registers the "
                           "Hub folder reader and writer and the teacher loader) before calling it.")
    return _providers[name]
