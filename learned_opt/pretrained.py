"""Pretrained learned optimizers shipped inside the package.

Each ``learned_opt/pretrained/<name>.safetensors`` was written by a ``meta-train`` preset of this
repository (the file's metadata names the preset and the command), so anyone can reproduce it::

  meta-train --preset default --run-dir runs/default   # -> runs/default/optimizer.safetensors

Example::

  tx = learned_opt.pretrained()              # an optax GradientTransformationExtraArgs
  tx = learned_opt.pretrained("default", learning_rate=0.5)
"""

from __future__ import annotations

import os

import optax

from learned_opt import serialization

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
_SUFFIX = ".safetensors"


def list_pretrained() -> list[str]:
  """Names of the pretrained optimizers shipped with the package, sorted."""
  if not os.path.isdir(_DIR):
    return []
  return sorted(f[: -len(_SUFFIX)] for f in os.listdir(_DIR) if f.endswith(_SUFFIX))


def pretrained_path(name: str = "default") -> str:
  """Path of the shipped file for ``name``; ``ValueError`` listing the names if unknown."""
  names = list_pretrained()
  if name not in names:
    raise ValueError(f"No pretrained learned optimizer named {name!r}; shipped: {names}")
  return os.path.join(_DIR, name + _SUFFIX)


def load_pretrained(name: str = "default"):
  """Returns ``(lopt, meta_params)`` of the shipped optimizer ``name``."""
  return serialization.load(pretrained_path(name))


def pretrained(name: str = "default", learning_rate: optax.ScalarOrSchedule = 1.0, *,
               num_steps: int | None = None) -> optax.GradientTransformationExtraArgs:
  """A ready optax optimizer from the shipped meta-parameters ``name``.

  Args:
    name: one of :func:`list_pretrained`.
    learning_rate: multiplier on the learned step (1.0 = as meta-trained).
    num_steps: optional length of the training run, for horizon features. Leave it None for
      the shipped optimizers: ``meta-train`` unrolls do not pass it, so their horizon-feature
      weights are untrained.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  lopt, meta_params = load_pretrained(name)
  return lopt.transform(meta_params, learning_rate, num_steps=num_steps)
