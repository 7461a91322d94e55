"""Model definitions; importing this module registers them with timm."""
from .digits_vit import *  # noqa: F401,F403
from .raptor_vit import *  # noqa: F401,F403
