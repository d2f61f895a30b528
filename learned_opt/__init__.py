"""learned_opt: learned optimizers that are optax transformations.

Only jax, optax, numpy and safetensors are needed to import this package.
"""

from learned_opt.base import LearnedOptimizer, MetaParams, register, registry
from learned_opt.baselines import Adam, SGDMomentum
from learned_opt.mlp import MLPOptimizer, TensorFeatures
from learned_opt.adafactor_mlp import AdafactorMLPOptimizer
from learned_opt.schedule import LearnedSchedule
from learned_opt.chain import Chain, chain
from learned_opt.orthogonalize import Orthogonalize
from learned_opt.param_scale import ParamScale
from learned_opt.cosine_decay import CosineDecay
from learned_opt.clip import ClipGradients
from learned_opt.controller import TensorController
from learned_opt import inits
from learned_opt import experimental  # registers the pieces that older files may name
from learned_opt.serialization import FileFormatError, load, provenance, read, save
from learned_opt.pretrained import (NoHorizonWarning, PretrainedInfo, list_pretrained,
                                    load_pretrained, pretrained, pretrained_info, pretrained_path)

__all__ = [
    "AdafactorMLPOptimizer",
    "Adam",
    "Chain",
    "ClipGradients",
    "FileFormatError",
    "LearnedOptimizer",
    "LearnedSchedule",
    "MLPOptimizer",
    "MetaParams",
    "NoHorizonWarning",
    "Orthogonalize",
    "ParamScale",
    "CosineDecay",
    "PretrainedInfo",
    "SGDMomentum",
    "TensorController",
    "TensorFeatures",
    "chain",
    "inits",
    "list_pretrained",
    "load",
    "load_pretrained",
    "pretrained",
    "pretrained_info",
    "pretrained_path",
    "provenance",
    "read",
    "register",
    "registry",
    "save",
]

__version__ = "0.1.0"
