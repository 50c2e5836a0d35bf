"""``libs.nets.build_nnet`` kept at this path: the registry lives in ``libs.models.registry``."""
from libs.models.registry import NETWORKS, build_nnet  # noqa: F401
