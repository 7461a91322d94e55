"""raptor_zoo: Raptors, block-recurrent surrogates of Vision Transformers (Jacobs et al., arXiv 2512.19941).

Importing the package registers the Raptor architectures (and the embedded digits teacher) in timm's registry.
"""
from .models import *  # noqa: F401,F403  (registers timm entrypoints)
from .models.raptor_base import RaptorMixin
from .models.raptor_vit import RaptorVisionTransformer
from .teachers import Teacher, load_teacher
from .build import from_teacher  # registers the teacher loader the model classes' from_teacher uses
from .hf_convert.clip import swap_vision_tower
from .hub import load_pretrained as from_pretrained, push_to_hub, save_pretrained  # registers the folder I/O
from .version import __version__
from .zoo import list_models
