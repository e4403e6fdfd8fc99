"""Edge Pruning on one model-agnostic masked transformer (torch only: no jax, no tracr)."""

from prune.graph import Graph
from prune.model import Transformer, TransformerConfig

__all__ = ["Graph", "Transformer", "TransformerConfig"]
