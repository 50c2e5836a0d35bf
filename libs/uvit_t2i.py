"""``libs.uvit_t2i`` as in the released U-ViT layout: the class lives in ``libs.models.uvit_t2i``."""
from libs.models.uvit_t2i import UViT  # noqa: F401
