"""The public optimizer API: GaLore AdamW (32/8-bit), APOLLO's and Fira's AdamW, the projector, layer-wise
updates, and GradNormLoRP's weight-norm reparameterization."""

from .apollo import ApolloAdamW
from .fira import FiraAdamW
from .galore_adamw import GaLoreAdamW, GaLoreAdamW8bit
from .layerwise import LayerwiseOptimizer
from .param_groups import adamw_param_groups, galore_param_groups
from .projector import (
    PROJ_TYPES,
    SVD_METHODS,
    NonFiniteGradientError,
    SVDFailedError,
    compute_projection,
    project,
    project_back,
    projection_side,
)
from .weightnorm import WeightNormLinear, apply_weight_norm, merge_weight_norm

__all__ = [
    "ApolloAdamW", "FiraAdamW", "GaLoreAdamW", "GaLoreAdamW8bit", "LayerwiseOptimizer", "PROJ_TYPES", "SVD_METHODS",
    "NonFiniteGradientError", "SVDFailedError", "compute_projection", "project", "project_back",
    "projection_side", "WeightNormLinear", "apply_weight_norm", "merge_weight_norm", "adamw_param_groups",
    "galore_param_groups",
]
