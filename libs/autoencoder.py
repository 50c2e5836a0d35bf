"""``libs.autoencoder`` as in the released U-ViT layout: the code lives in ``libs.models.autoencoder``."""
from libs.models.autoencoder import *  # noqa: F401,F403
from libs.models.autoencoder import __all__  # noqa: F401
