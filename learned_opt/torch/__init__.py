"""learned_opt.torch: learned optimizer files applied as ``torch.optim.Optimizer``\\ s.

Meta-train in JAX, train in PyTorch: :class:`LearnedOptimizer` reads a file written by
:func:`learned_opt.save` (or a shipped pretrained optimizer by name) and applies the same
update rule as its optax transform, numerically equal to float32 rounding, in torch tensors
only. Needs PyTorch: ``pip install "learned_opt[torch]"``. Importing :mod:`learned_opt` never
imports torch; importing this module does.

Example::

  from learned_opt.torch import LearnedOptimizer
  opt = LearnedOptimizer(model.parameters(), "default", num_steps=1000)
"""

try:
  import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without torch
  raise ImportError("learned_opt.torch needs PyTorch: pip install 'learned_opt[torch]'") from e

from learned_opt.torch.optimizer import LearnedOptimizer
from learned_opt.torch.rules import RULES, LoadedRule, load_rule

__all__ = ["LearnedOptimizer", "LoadedRule", "RULES", "load_rule"]
