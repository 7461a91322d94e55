"""Model-level Hub methods of a Raptor: ``save_pretrained``, ``push_to_hub`` and the ``from_pretrained`` classmethod.

huggingface_hub's model-mixin convention (``ModelHubMixin`` / ``PyTorchModelHubMixin``: the methods live on the
model, ``from_pretrained`` is a classmethod taking a folder or repo id plus hub options), delegating to the one
writer and one reader of the Raptor folder, :mod:`raptor_zoo.hub`. The mixin does not inherit ``ModelHubMixin``:
that class writes its own config.json and card, where a Raptor folder's are raptor_zoo's (timm + transformers keys,
provenance, measured metrics).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["RaptorHubMixin"]

_Model = TypeVar("_Model", bound="RaptorHubMixin")


class RaptorHubMixin:
    """``save_pretrained`` / ``push_to_hub`` / ``from_pretrained`` on a Raptor, reading and writing exactly the
    folder ``raptor_zoo.save_pretrained`` writes."""

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
        from .. import hub

        folder = hub.save_pretrained(self, save_directory, repo_id=repo_id, **save_kwargs)
        if push_to_hub:
            return hub.push_to_hub(folder, repo_id or folder.resolve().name)
        return folder

    def push_to_hub(
            self,
            repo_id: str,
            *,
            private: bool = False,
            token: str | None = None,
            commit_message: str = "Upload Raptor with raptor_zoo",
            revision: str | None = None,
            create_pr: bool = False,
            **save_kwargs: Any,
    ) -> str:
        """Save into a temporary folder and upload it in one commit (``raptor_zoo.hub.push_to_hub``); returns the
        commit (or pull request) URL."""
        from .. import hub

        return hub.push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message,
                               revision=revision, create_pr=create_pr, **save_kwargs)

    @classmethod
    def from_pretrained(
            cls: type[_Model],
            pretrained_model_name_or_path: str | os.PathLike,
            *,
            revision: str | None = None,
            token: str | bool | None = None,
            cache_dir: str | os.PathLike | None = None,
            strict: bool = True,
            **model_kwargs: Any,
    ) -> _Model:
        """A Raptor (eval mode) from a folder, zoo name or Hub repo id (``raptor_zoo.hub.load_pretrained``;
        ``model_kwargs`` such as ``num_classes=0`` for a backbone go to ``timm.create_model``)."""
        from .. import hub

        model = hub.load_pretrained(pretrained_model_name_or_path, revision=revision, token=token,
                                    cache_dir=cache_dir, strict=strict, **model_kwargs)
        if not isinstance(model, cls):
            raise TypeError(f"{pretrained_model_name_or_path!s} builds a {type(model).__name__}, not a {cls.__name__}; "
                            f"load it with {type(model).__name__}.from_pretrained or raptor_zoo.from_pretrained.")
        return model
