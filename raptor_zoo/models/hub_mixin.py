"""Model-level Hub methods of a Raptor: ``save_pretrained``, ``push_to_hub`` and the ``from_pretrained`` classmethod.

huggingface_hub's model-mixin convention (``ModelHubMixin`` / ``PyTorchModelHubMixin``: the methods live on the
model, ``from_pretrained`` is a classmethod taking a folder or repo id plus hub options), delegating to the one
writer and one reader of the Raptor folder, :mod:`raptor_zoo.hub` (which registers them in
:mod:`raptor_zoo.models.services`: the model layer does not import it). The mixin does not inherit ``ModelHubMixin``:
that class writes its own config.json and card, where a Raptor folder's are raptor_zoo's (timm + transformers keys,
provenance, measured metrics).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from .services import service

__all__ = ["RaptorHubMixin"]

_Model = TypeVar("_Model", bound="RaptorHubMixin")


class RaptorHubMixin:
    """``save_pretrained`` / ``push_to_hub`` / ``from_pretrained`` on a Raptor, reading and writing exactly the
    folder ``raptor_zoo.save_pretrained`` writes (through :mod:`raptor_zoo.models.services`)."""

    def save_pretrained(
            self,
            save_directory: str | os.PathLike,
            *,
            repo_id: str | None = None,
            push_to_hub: bool = False,
            **save_kwargs: Any,
    ) -> Path | str:
        """Write the Raptor folder (``raptor_zoo.hub.save_pretrained``; ``save_kwargs``: metrics, phases, plots,
        training, card_data ...). Returns the folder, or with ``push_to_hub=True`` the commit URL of uploading it
        to ``repo_id`` (default: the folder name)."""
        folder = service("save_pretrained")(self, save_directory, repo_id=repo_id, **save_kwargs)
        if push_to_hub:
            return service("push_to_hub")(folder, repo_id or folder.resolve().name)
        return folder

    def push_to_hub(self, repo_id: str, **push_kwargs: Any) -> str:
        """Save into a temporary folder and upload it in one commit; returns the commit (or pull request) URL.
        ``push_kwargs`` are those of ``raptor_zoo.hub.push_to_hub`` (private, token, commit_message, revision,
        create_pr, and the save_pretrained options)."""
        return service("push_to_hub")(self, repo_id, **push_kwargs)

    @classmethod
    def from_pretrained(
            cls: type[_Model],
            pretrained_model_name_or_path: str | os.PathLike,
            **load_kwargs: Any,
    ) -> _Model:
        """A Raptor (eval mode) from a folder, zoo name or Hub repo id (``raptor_zoo.hub.load_pretrained``:
        revision, token, cache_dir, strict, and model overrides such as ``num_classes=0`` for a backbone)."""
        model = service("load_pretrained")(pretrained_model_name_or_path, **load_kwargs)
        if not isinstance(model, cls):
            raise TypeError(f"{pretrained_model_name_or_path!s} builds a {type(model).__name__}, not a {cls.__name__}; "
                            f"load it with {type(model).__name__}.from_pretrained or raptor_zoo.from_pretrained.")
        return model
