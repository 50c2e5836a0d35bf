"""``libs.clip`` as in the released U-ViT layout: the code lives in ``libs.models.clip``."""
from libs.models.clip import *  # noqa: F401,F403
from libs.models.clip import __all__  # noqa: F401
