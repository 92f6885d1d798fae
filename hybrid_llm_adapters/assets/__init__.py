"""Small files that ship inside the package (the trained reward head for the default pair)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent
DEFAULT_HEAD_FILE = ASSETS / "reward_head_qwen2.5-coder-0.5b_1.5b.safetensors"


def default_reward_head_path() -> Path | None:
    """The shipped candidate reward head for the default Qwen2.5-Coder 0.5B / 1.5B pair, if one is built."""
    return DEFAULT_HEAD_FILE if DEFAULT_HEAD_FILE.exists() else None
