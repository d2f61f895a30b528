"""The gradient-estimator protocol, the fields every estimator has, and how estimates combine.

An estimator is a frozen dataclass built for one learned optimizer and one task family, with
the static settings of its unrolls, and two pure functions::

  estimator = PES(lopt, family, UnrollConfig(truncation_length=10), num_pairs=4)
  state = estimator.init(key, meta_params)
  grad, state, metrics = estimator.estimate(meta_params, state, key)

``grad`` has the structure of ``meta_params``; ``state`` is a pytree of plain arrays (PRNG keys as
raw ``uint32`` data) so it checkpoints with orbax; ``metrics`` is a dict of scalar arrays with at
least ``meta_loss``, ``grad_norm``, ``grad_variance`` (the estimated variance of ``grad``: the
trace of the per-particle covariance divided by the number of independent particles),
``nonfinite_loss``, ``nonfinite_grad``, ``nonfinite`` and ``inner_steps``. The last four are
counts (:data:`COUNT_METRICS`): summed, never averaged, wherever estimates are combined (groups,
outer steps of a dispatch, steps of a logged interval).

Every field is checked by the constructor (:class:`meta_train.errors.FieldError` names it), so
an estimator that exists is usable. The estimators by name: :mod:`meta_train.estimators.registry`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
import optax

from meta_train import errors
from meta_train import unroll as unroll_lib


# The metrics that are counts: summed over groups, dispatches and log intervals, not averaged.
COUNT_METRICS: tuple[str, ...] = ("inner_steps", "nonfinite", "nonfinite_loss", "nonfinite_grad")


class GradientEstimator(Protocol):
  """What every estimator provides (see the module docstring)."""

  name: ClassVar[str]
  lopt: Any
  family: Any

  def init(self, key: jax.Array, meta_params: Any) -> Any:
    ...

  def estimate(self, meta_params: Any, state: Any, key: jax.Array
               ) -> tuple[Any, Any, dict[str, jax.Array]]:
    ...


# Fields every estimator has; the others are its own settings (see Estimator.own_fields).
_COMMON_FIELDS = ("lopt", "family", "unroll")


@dataclasses.dataclass(frozen=True)
class Estimator:
  """Fields shared by the built-in estimators.

  Attributes:
    lopt: the learned optimizer whose meta-parameters are estimated.
    family: the task family inner trainings are drawn from.
    unroll: the :class:`~meta_train.unroll.UnrollConfig` of the truncated unrolls.
  """

  lopt: Any
  family: Any
  unroll: unroll_lib.UnrollConfig = dataclasses.field(default_factory=unroll_lib.UnrollConfig)

  name: ClassVar[str] = "estimator"

  def __post_init__(self):
    for field in ("lopt", "family"):
      if getattr(self, field) is None:
        raise errors.FieldError(type(self).__name__, field, "is required, got None")
    if not isinstance(self.unroll, unroll_lib.UnrollConfig):
      raise errors.FieldError(type(self).__name__, "unroll",
                              f"must be an UnrollConfig, got {self.unroll!r}")

  # Unroll settings the estimator does not read (refused when set: see ``registry``). A
  # truncated unroll has no final loss to recompute: only full-horizon ES reads final_batches.
  unused_unroll_fields: ClassVar[tuple[str, ...]] = ("final_batches",)

  @classmethod
  def unroll_config(cls, **fields: Any) -> unroll_lib.UnrollConfig:
    """The :class:`~meta_train.unroll.UnrollConfig` of the given unroll settings (the others
    at their defaults)."""
    return unroll_lib.UnrollConfig(**fields)

  @classmethod
  def own_fields(cls) -> tuple[str, ...]:
    """Names of the estimator's own settings (fields other than ``lopt``, ``family``, ``unroll``)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _COMMON_FIELDS)


def tree_mean0(tree: Any) -> Any:
  """Mean over the leading axis of every leaf."""
  return jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)


def guard_grad(grad: Any) -> tuple[Any, jax.Array]:
  """Zeroes non-finite gradient entries; returns ``(grad, count of zeroed entries)``."""
  leaves = jax.tree.leaves(grad)
  count = sum((jnp.sum(~jnp.isfinite(x)).astype(jnp.int32) for x in leaves),
              jnp.zeros([], jnp.int32))
  clean = jax.tree.map(lambda x: jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x)), grad)
  return clean, count


def combine(per_particle: Any, meta_loss: jax.Array, nonfinite_loss: jax.Array,
            inner_steps: int) -> tuple[Any, dict[str, jax.Array]]:
  """Averages per-particle estimates and builds the common metrics.

  Args:
    per_particle: independent gradient estimates with a leading axis (pairs or particles).
    meta_loss: scalar meta-loss of this estimate.
    nonfinite_loss: int32 count of replaced non-finite inner losses.
    inner_steps: inner steps executed (static int).

  Returns:
    ``(grad, metrics)``; non-finite entries of ``grad`` are zeroed and counted.
  """
  per_particle, bad_particles = guard_grad(per_particle)
  n = jax.tree.leaves(per_particle)[0].shape[0]
  grad = tree_mean0(per_particle)
  grad, bad = guard_grad(grad)
  var = sum(jnp.sum(jnp.var(x, axis=0, ddof=1 if n > 1 else 0)) for x in
            jax.tree.leaves(per_particle)) / n
  nonfinite_grad = bad + bad_particles
  metrics = {
      "meta_loss": jnp.asarray(meta_loss, jnp.float32),
      "grad_norm": optax.tree.norm(grad).astype(jnp.float32),
      "grad_variance": jnp.asarray(var, jnp.float32),
      "nonfinite_loss": jnp.asarray(nonfinite_loss, jnp.int32),
      "nonfinite_grad": nonfinite_grad,
      "nonfinite": jnp.asarray(nonfinite_loss, jnp.int32) + nonfinite_grad,
      "inner_steps": jnp.asarray(inner_steps, jnp.int32),
  }
  return grad, metrics
