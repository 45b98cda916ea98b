"""The simulated analog crossbar target: device physics, periphery, presets (docs/crossbar.md)."""

from .config import (Device, Periphery, ReadSettings, TileConfig, TimeEffects, Variation, WriteSettings,
                     device_config)
from .errors import CrossbarConfigError
from .presets import PRESETS
from .response import RESPONSES, ConstantStep, ExponentialStep, ResponseModel, SoftBounds, TableResponse

__all__ = ["ConstantStep", "CrossbarConfigError", "Device", "ExponentialStep", "PRESETS", "Periphery", "RESPONSES",
           "ReadSettings", "ResponseModel", "SoftBounds", "TableResponse", "TileConfig", "TimeEffects", "Variation",
           "WriteSettings", "device_config"]
