"""raptor_zoo: Raptors, block-recurrent surrogates of Vision Transformers (Jacobs et al., arXiv 2512.19941).

Importing the package registers the Raptor architectures (and the embedded digits teacher) in timm's registry.
"""
from .models import *  # noqa: F401,F403  (registers timm entrypoints)
from .models.raptor_base import RaptorMixin
from .models.raptor_timm import raptor_from_teacher as from_teacher
from .models.raptor_vit import RaptorVisionTransformer
from .teachers import Teacher, load_teacher
from .hf_convert.clip import swap_vision_tower
from .hub import load_pretrained as from_pretrained, push_to_hub, save_pretrained
from .zoo import list_models

__version__ = "0.1.0"
