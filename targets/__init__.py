"""Device backends ("targets") for EP learning, behind one small interface."""

from .base import Capabilities, Init, NoOptions, Quantization, RunContext, Start, Target, TargetError, Update, \
    UpdateReport, start_states
from .options import check_option
from .registry import DEFAULT, ENTRY_POINT_GROUP, available, configure, get, open, open_exact, register, \
    table_owners

__all__ = ["Capabilities", "DEFAULT", "ENTRY_POINT_GROUP", "Init", "NoOptions", "Quantization", "RunContext", "Start",
           "Target", "TargetError", "Update", "UpdateReport", "available", "check_option", "configure", "get", "open",
           "open_exact", "register", "start_states", "table_owners"]
