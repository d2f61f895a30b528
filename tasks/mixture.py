"""A task family that samples among other families (whose parameter structures differ).

.. math::
  i \\sim \\mathrm{Categorical}(w), \\qquad
  L(\\theta_1, \\dots, \\theta_K) = L_i(\\theta_i)

``task_params = {"index": i, "params": (tp_1, ..., tp_K)}`` holds the sampled parameters of
*every* member family, so its structure is fixed and N mixed tasks are one ``vmap``. The task's
``init`` returns the tuple ``(θ_1, ..., θ_K)`` of every member's parameters, ``sample_batch`` and
``eval_batch`` the tuple of every member's batches (of the same split), and ``loss`` / ``normalizer`` pick member ``i`` with
``lax.switch``.

Trade-off of this fixed structure (chosen because it works unchanged under ``vmap``, ``scan``
and any optax optimizer):

* Only ``θ_i`` receives a gradient; the other members' gradients are exactly zero. Adam-like
  optimizers then leave them unchanged, but an optimizer whose update depends on the parameter
  values (weight decay, learned optimizers with parameter features) may still move them. They
  never affect the loss.
* Memory and optimizer state hold every member's parameters. Under ``vmap`` the batched
  ``lax.switch`` becomes a select, so every member's loss (and batch) is computed and all but
  one discarded: a step of a mixture costs about the sum of its members' steps. Without
  ``vmap``, ``lax.switch`` runs only the selected member's loss.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from tasks import base


@dataclasses.dataclass(frozen=True)
class MixtureTask(base.Task):
  """The task of member ``index`` among ``tasks`` (``index`` may be a traced int)."""

  tasks: tuple[base.Task, ...]
  index: jax.Array
  name: str = "mixture"
  ceiling: float = base.DEFAULT_CEILING

  def init(self, key):
    keys = jax.random.split(key, len(self.tasks))
    return tuple(t.init(k) for t, k in zip(self.tasks, keys))

  def sample_batch(self, key, split="train"):
    base.check_split(split)
    keys = jax.random.split(key, len(self.tasks))
    return tuple(t.sample_batch(k, split) for t, k in zip(self.tasks, keys))

  def eval_batch(self, split):
    """The tuple of every member's :meth:`~tasks.base.Task.eval_batch` of ``split``."""
    base.check_split(split)
    return tuple(t.eval_batch(split) for t in self.tasks)

  def loss(self, params, key, batch):
    keys = jax.random.split(key, len(self.tasks))
    branches = [
        lambda p, b, i=i: self.tasks[i].loss(p[i], keys[i], b[i]).astype(jnp.float32)
        for i in range(len(self.tasks))
    ]
    return jax.lax.switch(self.index, branches, params, batch)

  def normalizer(self, loss):
    loss = jnp.asarray(loss)
    branches = [lambda l, t=t: jnp.asarray(t.normalizer(l), jnp.float32) for t in self.tasks]
    value = jax.lax.switch(self.index, branches, loss)
    return base.clip_to_ceiling(jnp.where(jnp.isfinite(loss), value, jnp.inf), self.ceiling,
                                -self.ceiling)


@dataclasses.dataclass(frozen=True)
class MixtureFamily(base.TaskFamily):
  """Samples a member family with probability ``weights`` (uniform by default).

  Attributes:
    members: registered family names or :class:`~tasks.base.TaskFamily` objects.
    weights: non-negative sampling weights, one per member (normalised), or ``None``.
    name: the family's name.
  """

  members: tuple[str | base.TaskFamily, ...] = ()
  weights: tuple[float, ...] | None = None
  name: str = "mixture"

  def __post_init__(self):
    if not isinstance(self.members, tuple) or not self.members:
      raise ValueError(f"MixtureFamily.members must be a non-empty tuple, got {self.members!r}")
    resolved = tuple(base.get(m) if isinstance(m, str) else m for m in self.members)
    for m in resolved:
      if not isinstance(m, base.TaskFamily):
        raise ValueError(f"MixtureFamily.members: {m!r} is neither a name nor a TaskFamily")
    if self.weights is not None:
      w = tuple(self.weights)
      if len(w) != len(resolved) or any(not x >= 0 for x in w) or not sum(w) > 0:
        raise ValueError(f"MixtureFamily.weights must be {len(resolved)} non-negative numbers "
                         f"with a positive sum, got {self.weights!r}")
    object.__setattr__(self, "_families", resolved)

  @property
  def families(self) -> tuple[base.TaskFamily, ...]:
    """The member families (names resolved through the registry)."""
    return self._families  # type: ignore[attr-defined]

  @property
  def suggested_lr(self) -> float:
    """The smallest suggested Adam learning rate of the members (1e-2 where they have none)."""
    return min(getattr(f, "suggested_lr", 1e-2) for f in self.families)

  def _log_weights(self) -> jax.Array:
    n = len(self.families)
    w = self.weights if self.weights is not None else (1.0,) * n
    total = sum(w)
    return jnp.array([math.log(x / total) if x > 0 else -math.inf for x in w], jnp.float32)

  def sample(self, key):
    k_index, k_params = jax.random.split(key)
    keys = jax.random.split(k_params, len(self.families))
    return {
        "index": jax.random.categorical(k_index, self._log_weights()).astype(jnp.int32),
        "params": tuple(f.sample(k) for f, k in zip(self.families, keys)),
    }

  def task(self, task_params):
    members = tuple(f.task(tp) for f, tp in zip(self.families, task_params["params"]))
    ceiling = max(t.ceiling for t in members)
    return MixtureTask(tasks=members, index=task_params["index"], name=self.name,
                       ceiling=ceiling)


def mixture_of(members: Sequence[str | base.TaskFamily],
               weights: Sequence[float] | None = None,
               name: str = "mixture") -> MixtureFamily:
  """Builds a :class:`MixtureFamily` from any sequences of members and weights.

  Example::

    family = tasks.mixture_of(["digits_mlp", "quadratic"], weights=[3, 1])
    task_params = jax.vmap(family.sample)(jax.random.split(key, 8))
  """
  return MixtureFamily(members=tuple(members),
                       weights=None if weights is None else tuple(weights), name=name)


# The MLP classifiers and the quadratic. Conv families are left out of the default because under
# vmap a mixture step costs the sum of its members' steps (see the module docstring); build
# ``mixture(("digits_conv", ...))`` to include them.
DEFAULT_MEMBERS = ("digits_mlp", "gaussian_mixture_mlp", "mnist1d_mlp", "quadratic")

base.register_family("mixture", lambda: MixtureFamily(members=DEFAULT_MEMBERS))
