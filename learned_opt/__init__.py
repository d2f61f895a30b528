"""learned_opt: learned optimizers that are optax transformations.

Only jax, optax, numpy and safetensors are needed to import this package.
"""

from learned_opt.base import LearnedOptimizer, MetaParams, register, registry
from learned_opt.baselines import Adam, SGDMomentum

__all__ = [
    "Adam",
    "LearnedOptimizer",
    "MetaParams",
    "SGDMomentum",
    "register",
    "registry",
]

__version__ = "0.1.0"
