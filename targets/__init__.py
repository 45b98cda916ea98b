"""Device backends ("targets") for EP learning, behind one small interface."""

from .base import Capabilities, Init, Target, TargetError, Trains, UpdateReport
from .registry import ENTRY_POINT_GROUP, available, get, open, register

__all__ = ["Capabilities", "ENTRY_POINT_GROUP", "Init", "Target", "TargetError", "Trains", "UpdateReport", "available", "get",
           "open", "register"]
