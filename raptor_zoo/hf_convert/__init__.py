"""transformers vision encoders as timm models computing exactly the same thing: one converter per family.

Each module here holds one family (``vit.py``: ViT, DeiT, DINOv2, MAE, MSN, I-JEPA; ``clip.py``: CLIP, SigLIP,
AIMv2; ``beit.py``: BEiT, Data2Vec-vision; ``dinov3.py``: DINOv3) and registers an :class:`HfConverter` per
transformers ``model_type`` in :data:`HF_CONVERTERS`. :func:`convert_hf_model` dispatches on the model's
``config.model_type``; ``raptor_zoo.load_teacher`` uses it for modules, folders and Hub repo ids, so a
transformers teacher becomes a timm model of a family the Raptors already cover (``models/families.py``).
"""
from . import beit, clip, dinov3, registry, siglip2, vit  # noqa: F401  (each family registers its converters)
from .registry import *  # noqa: F403

__all__ = registry.__all__  # the public names of the package are the registry's
