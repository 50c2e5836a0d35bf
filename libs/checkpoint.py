"""``libs.checkpoint.load_weights`` and friends, kept at this path for scripts written against
earlier versions: the code lives in ``libs.run.checkpoint``."""
from libs.run.checkpoint import (LoadReport, WeightsMismatchError, load_weights, read_state_dict,  # noqa: F401
                                 save_weights)
