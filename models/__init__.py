"""Llama-style decoder, its named sizes, and the offline data pipeline."""

from models.config import SIZES, ModelConfig, get_model_config
from models.llama import Transformer, build_model

__all__ = ["SIZES", "ModelConfig", "get_model_config", "Transformer", "build_model"]
