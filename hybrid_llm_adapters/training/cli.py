"""Sub-commands of the reward-model pipeline (added to ``hybrid-llm``)."""

from __future__ import annotations

import argparse


def add_training_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register synth / train-reward / calibrate (filled in by the training modules)."""
