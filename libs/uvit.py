"""``libs.uvit`` as in the released U-ViT layout: the class lives in ``libs.models.uvit``."""
from libs.models.uvit import UViT  # noqa: F401
