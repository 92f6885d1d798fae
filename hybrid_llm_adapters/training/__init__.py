"""Reward-model pipeline: data synthesis, chunking, training, threshold calibration."""
