"""Circuit discovery on one masked transformer (torch, numpy and safetensors only: no jax, no tracr).

The pieces, in the order a run uses them: a :class:`Transformer` and its
:class:`Graph`; :class:`Examples`; a method (:func:`edge_pruning`, :func:`eap`,
:func:`eap_ig`, :func:`acdc`: each a :class:`Pruner`); the :class:`Circuit` it
returns, through the shared finalizer (:func:`finalize`); and the
:class:`Evaluator` that answers every question about a circuit. Hugging Face
checkpoints load with :func:`prune.loaders.from_hf`; language-model tasks are
in :mod:`prune.tasks`.
"""

from prune.baselines import acdc, acdc_sweep, eap, eap_ig
from prune.circuit import Circuit, CircuitFileError
from prune.data import Examples
from prune.edge_pruning import EdgePruner, EdgePruningConfig, edge_pruning, language_model_config
from prune.evaluate import Evaluator
from prune.finalize import finalize
from prune.graph import Graph
from prune.model import Transformer, TransformerConfig
from prune.pruner import Pruner

__all__ = [
    "Transformer", "TransformerConfig", "Graph", "Examples",
    "Evaluator", "Circuit", "CircuitFileError", "Pruner", "finalize",
    "edge_pruning", "EdgePruner", "EdgePruningConfig", "language_model_config",
    "eap", "eap_ig", "acdc", "acdc_sweep",
]
