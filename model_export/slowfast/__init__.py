"""SlowFast R50 8x8 in PyTorch (our code) and its checkpoint loaders, for ``trdetr-export --slowfast``."""

from .config import R50_8X8, SlowFastConfig, config_from_shapes, proportional_config, tiny_config
from .model import SlowFast, init_random_
from .weights import LoadedSlowFast, SlowFastWeightsError, load_slowfast, state_dict_from_file

__all__ = [
    "R50_8X8",
    "LoadedSlowFast",
    "SlowFast",
    "SlowFastConfig",
    "SlowFastWeightsError",
    "config_from_shapes",
    "init_random_",
    "load_slowfast",
    "proportional_config",
    "state_dict_from_file",
    "tiny_config",
]
