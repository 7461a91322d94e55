"""Model definitions; importing this module registers them with timm. Everything imported here is re-exported
(``raptor_zoo`` star-imports it), hence the F401 exemption below."""
# ruff: noqa: F401
from .configuration_raptor import RaptorConfig
from .digits_vit import *  # noqa: F401,F403
from .image_processing_raptor import RaptorImageProcessor, register_raptor_image_processor
from .modeling_raptor import (
    RaptorBackbone,
    RaptorForImageClassification,
    RaptorModel,
    RaptorPreTrainedModel,
    register_raptor_auto_classes,
)
from .raptor_base import RaptorMixin
from .raptor_timm import *  # noqa: F401,F403
from .raptor_vit import *  # noqa: F401,F403

register_raptor_auto_classes()
register_raptor_image_processor()
