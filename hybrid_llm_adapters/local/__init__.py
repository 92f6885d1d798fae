"""On-device models: the SLM with a roll-back-able KV cache, and reward scorers."""

from .slm import LocalModel, SLMState, load_local_model

__all__ = ["LocalModel", "SLMState", "load_local_model"]
