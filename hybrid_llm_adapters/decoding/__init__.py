"""The decode loop (``loop.py``), one strategy per cloud mode (``modes.py``), text release and ledger booking."""

from .loop import DecodeContext, RequestDecoder, pick_mode
from .modes import MODES, CloudMode

__all__ = ["MODES", "CloudMode", "DecodeContext", "RequestDecoder", "pick_mode"]
