"""Offline learning: encoder pre-training and per-group LoRA fine-tuning on compressed contexts."""

from .encoder_training import EncoderTrainingConfig, evaluate_encoder, train_encoder

__all__ = ["EncoderTrainingConfig", "evaluate_encoder", "train_encoder"]
