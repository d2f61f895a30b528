"""The gradient-estimator protocol and the helpers its implementations share.

An estimator is a small frozen dataclass holding static configuration (the learned optimizer,
the task family, particle counts, truncation, σ) with two pure functions::

  state = estimator.init(key, meta_params)
  grad, state, metrics = estimator.estimate(meta_params, state, key)

``grad`` has the structure of ``meta_params``; ``state`` is a pytree of plain arrays (PRNG keys as
raw ``uint32`` data) so it checkpoints with orbax; ``metrics`` is a dict of scalar arrays with at
least ``meta_loss``, ``grad_norm``, ``grad_variance`` (the estimated variance of ``grad``: the
trace of the per-particle covariance divided by the number of independent particles),
``nonfinite_loss``, ``nonfinite_grad``, ``nonfinite`` and ``inner_steps``.

Estimators may be built without ``lopt``/``family`` (e.g. from a config file) and bound later
with :meth:`Estimator.bind`; :class:`meta_train.trainer.MetaTrainer` does that.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax

from meta_train import sharding as sharding_lib
from meta_train import unroll as unroll_lib


class GradientEstimator(Protocol):
  """What every estimator provides (see the module docstring)."""

  def init(self, key: jax.Array, meta_params: Any) -> Any:
    ...

  def estimate(self, meta_params: Any, state: Any, key: jax.Array
               ) -> tuple[Any, Any, dict[str, jax.Array]]:
    ...


@dataclasses.dataclass(frozen=True)
class Estimator:
  """Shared fields and helpers of the built-in estimators.

  Attributes:
    lopt: the learned optimizer (``None`` until :meth:`bind`).
    family: the task family (``None`` until :meth:`bind`).
    unroll: the :class:`~meta_train.unroll.UnrollConfig`.
  """

  lopt: Any = None
  family: Any = None
  unroll: unroll_lib.UnrollConfig = dataclasses.field(default_factory=unroll_lib.UnrollConfig)

  name = "estimator"

  def bind(self, lopt, family) -> "Estimator":
    """A copy using ``lopt`` and ``family``.

    Raises:
      ValueError: if the estimator is already bound to a different optimizer or family.
    """
    for field, value in (("lopt", lopt), ("family", family)):
      current = getattr(self, field)
      if current is not None and current != value:
        raise ValueError(f"{type(self).__name__} is already bound to {field}={current!r}, "
                         f"cannot rebind it to {value!r}")
    return dataclasses.replace(self, lopt=lopt, family=family)

  def _check_bound(self):
    if self.lopt is None or self.family is None:
      raise ValueError(f"{type(self).__name__} has no learned optimizer / task family: call "
                       f".bind(lopt, family) or pass it to MetaTrainer first")

  def _unroll_many(self, meta_params, particles, batched_meta_params: bool, num_steps=None):
    """vmap of :func:`meta_train.unroll.unroll` over particles (and θ if batched)."""
    fn = lambda mp, ps: unroll_lib.unroll(self.lopt, self.family, self.unroll, mp, ps, num_steps)
    return jax.vmap(fn, in_axes=(0 if batched_meta_params else None, 0))(meta_params, particles)

  def _unroll_pairs(self, meta_params, particles, draw_from=None, config=None):
    """Unrolls ``2 N`` particles ``[pos; neg]`` with ``2 N`` θs, drawing randomness per pair.

    Both members of a pair are on the same run at the same step, so the data, keys and fresh
    runs of the truncation (:func:`meta_train.unroll.draw_truncation`) are drawn for the ``N``
    pairs (from ``draw_from``, default the ``pos`` half of ``particles``) and repeated: the
    result is bit-identical to drawing per particle at half the PRNG cost. ``config``
    overrides ``self.unroll``.
    """
    config = self.unroll if config is None else config
    if draw_from is None:
      draw_from, _ = split_pair(particles)
    draws = jax.vmap(lambda ps: unroll_lib.draw_truncation(self.family, config, ps))(draw_from)
    fn = lambda mp, ps, d: unroll_lib.unroll(self.lopt, self.family, config, mp, ps, draws=d)
    # sharding hook (meta_train/sharding.py): split the 2 N unrolls over the context mesh.
    meta_params, particles = sharding_lib.constrain_particles((meta_params, particles))
    return jax.vmap(fn)(meta_params, particles, repeat_pair(draws))


def check_pairs_sigma(est) -> None:
  """Raises ``ValueError`` unless ``est.num_pairs`` is a positive int and ``est.sigma > 0``."""
  if not isinstance(est.num_pairs, int) or isinstance(est.num_pairs, bool) or est.num_pairs <= 0:
    raise ValueError(f"{type(est).__name__}.num_pairs must be a positive int, "
                     f"got {est.num_pairs!r}")
  if not est.sigma > 0:
    raise ValueError(f"{type(est).__name__}.sigma must be > 0, got {est.sigma!r}")


def tree_mean0(tree: Any) -> Any:
  """Mean over the leading axis of every leaf."""
  return jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)


def stack_pair(pos: Any, neg: Any) -> Any:
  """Concatenates two batched pytrees along the leading axis (``[pos; neg]``)."""
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), pos, neg)


def split_pair(tree: Any) -> tuple[Any, Any]:
  """Inverse of :func:`stack_pair` for equal halves."""
  half = jax.tree.leaves(tree)[0].shape[0] // 2
  return (jax.tree.map(lambda x: x[:half], tree), jax.tree.map(lambda x: x[half:], tree))


def repeat_pair(tree: Any) -> Any:
  """``[tree; tree]``: both members of each antithetic pair start from the same state."""
  return stack_pair(tree, tree)


def antithetic_perturbation(key: jax.Array, meta_params: Any, sigma: float,
                            num_pairs: int) -> Any:
  """Gaussian perturbations ``ε ~ N(0, σ² I)`` shaped like ``meta_params`` with a pair axis.

  Args:
    key: PRNG key (typed or raw).
    meta_params: the meta-parameter pytree.
    sigma: perturbation standard deviation σ.
    num_pairs: number of antithetic pairs (leading axis of every leaf).

  Returns:
    A pytree like ``meta_params`` whose leaves have shape ``(num_pairs, *leaf.shape)``;
    pair ``i`` evaluates ``θ + ε_i`` and ``θ - ε_i``.
  """
  leaves, treedef = jax.tree.flatten(meta_params)
  sizes = [int(jnp.size(x)) for x in leaves]
  dtype = jnp.result_type(*leaves) if leaves else jnp.float32
  # One draw for all leaves: each PRNG call is a separate loop on CPU.
  z = sigma * jax.random.normal(unroll_lib.wrap_key(key), (num_pairs, sum(sizes)), dtype)
  eps, start = [], 0
  for x, n in zip(leaves, sizes):
    eps.append(z[:, start:start + n].reshape((num_pairs,) + jnp.shape(x)).astype(
        jnp.result_type(x)))
    start += n
  return jax.tree.unflatten(treedef, eps)


def perturbed_pair(meta_params: Any, eps: Any) -> Any:
  """``[θ + ε; θ − ε]`` with a leading axis of size ``2 * num_pairs``."""
  pos = jax.tree.map(lambda t, e: t + e, meta_params, eps)
  neg = jax.tree.map(lambda t, e: t - e, meta_params, eps)
  return stack_pair(pos, neg)


def es_grads(eps: Any, delta: jax.Array, sigma: float) -> Any:
  """Per-pair antithetic ES estimates ``ε_i (L⁺_i − L⁻_i) / (2σ²)``.

  Args:
    eps: perturbations with a leading pair axis (or accumulated perturbations for PES).
    delta: (num_pairs,) loss differences ``L⁺ − L⁻``.
    sigma: the perturbation standard deviation.

  Returns:
    Per-pair gradient estimates, shaped like ``eps``.
  """
  scale = delta / (2.0 * sigma**2)
  return jax.tree.map(lambda e: e * scale.reshape((-1,) + (1,) * (e.ndim - 1)).astype(e.dtype),
                      eps)


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
