"""The simulated analog crossbar target: device physics, periphery, presets (DEVICE_MODELS.md)."""

from .config import CrossbarConfigError, DeviceConfig, Periphery, device_config
from .presets import PRESETS

__all__ = ["CrossbarConfigError", "DeviceConfig", "PRESETS", "Periphery", "device_config"]
