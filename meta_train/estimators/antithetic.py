"""Antithetic estimators: ``N`` pairs unrolled with ``θ + ε_i`` and ``θ − ε_i``.

.. math::
  \\epsilon_i \\sim \\mathcal N(0, \\sigma^2 I), \\qquad
  \\hat g = \\frac1N \\sum_{i=1}^N g_i\\big(\\epsilon_i, L^+_i, L^-_i\\big)

:class:`AntitheticEstimator` owns everything the antithetic estimators share: the pairs and σ,
the perturbation, the paired unroll (both members of a pair see the same tasks and data, drawn
once per pair) and the combination of the per-pair gradients ``g_i``. A subclass supplies only
where its pairs start (:meth:`AntitheticEstimator.pair_particles`) and its per-pair gradient
with the next state (:meth:`AntitheticEstimator.pair_update`), which calls a pure function:
:func:`meta_train.estimators.truncated_es.es_pair_grads`,
:func:`meta_train.estimators.pes.pes_pair_grads`.

References:
  Salimans et al., "Evolution strategies as a scalable alternative to reinforcement learning",
  2017, arXiv 1703.03864 (antithetic sampling); Vicol, Metz & Sohl-Dickstein 2021, arXiv
  2112.13835, Sec. 2.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from meta_train import errors
from meta_train import unroll as unroll_lib
from meta_train.estimators import estimator as est_lib
from meta_train.runtime import sharding as sharding_lib


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


def sign_deltas(delta: jax.Array, scale: float) -> jax.Array:
  """Each pair's loss differences replaced by ``scale`` times the sign of their mean.

  .. math::
    \\Delta_{i,t} \\leftarrow s\\, \\mathrm{sign}\\big(\\tfrac1K \\textstyle\\sum_t \\Delta_{i,t}\\big)

  The estimate then carries which member of each pair did better, not by how much: a task
  whose losses are a hundred times larger no longer steers the meta-gradient a hundred times
  harder (learned_optimization's ``sign_delta_loss_scalar``, used for VeLO, arXiv 2211.09760,
  and Celo, arXiv 2501.12670).

  Args:
    delta: ``(num_pairs,)`` or ``(num_pairs, K)`` loss differences ``L⁺ − L⁻``.
    scale: ``s > 0``.

  Returns:
    An array shaped like ``delta``.
  """
  mean = delta if delta.ndim == 1 else jnp.mean(delta, axis=-1, keepdims=True)
  return jnp.broadcast_to(scale * jnp.sign(mean), delta.shape).astype(delta.dtype)


def antithetic_grads(directions: Any, delta: jax.Array, sigma: float) -> Any:
  """Per-pair antithetic estimates ``d_i (L⁺_i − L⁻_i) / (2σ²)``.

  Args:
    directions: per-pair directions ``d_i`` with a leading pair axis (the perturbations ε, or
      PES's accumulated perturbations ξ).
    delta: (num_pairs,) loss differences ``L⁺ − L⁻``.
    sigma: the perturbation standard deviation.

  Returns:
    Per-pair gradient estimates, shaped like ``directions``.
  """
  scale = delta / (2.0 * sigma**2)
  return jax.tree.map(lambda e: e * scale.reshape((-1,) + (1,) * (e.ndim - 1)).astype(e.dtype),
                      directions)


@dataclasses.dataclass(frozen=True)
class AntitheticEstimator(est_lib.Estimator):
  """Base of the antithetic estimators: pairs, σ, perturbation, paired unroll, combination.

  Subclasses implement ``init``, :meth:`pair_particles` and :meth:`pair_update`.

  Attributes:
    num_pairs: antithetic pairs per estimate (``2 * num_pairs`` unrolls).
    sigma: standard deviation σ of the perturbation ε.
    sign_delta: ``0`` (the default) uses each pair's loss differences as they are; ``s > 0``
      replaces them by ``s`` times the sign of their mean (:func:`sign_deltas`).
  """

  num_pairs: int = 8
  sigma: float = 0.01
  sign_delta: float = 0.0

  def __post_init__(self):
    super().__post_init__()
    errors.check_positive_int(type(self).__name__, "num_pairs", self.num_pairs)
    if not self.sigma > 0:
      raise errors.FieldError(type(self).__name__, "sigma", f"must be > 0, got {self.sigma!r}")
    if isinstance(self.sign_delta, bool) or not (0.0 <= self.sign_delta < float("inf")):
      raise errors.FieldError(type(self).__name__, "sign_delta",
                              f"must be >= 0 and finite (0: off), got {self.sign_delta!r}")

  @property
  def pair_unroll(self) -> unroll_lib.UnrollConfig:
    """The unroll every pair runs per estimate (default ``self.unroll``)."""
    return self.unroll

  def perturbation(self, key: jax.Array, meta_params: Any) -> Any:
    """This estimate's ``ε`` (:func:`antithetic_perturbation` with the pair axis first)."""
    return antithetic_perturbation(key, meta_params, self.sigma, self.num_pairs)

  def pair_particles(self, meta_params: Any, state: Any, key: jax.Array
                     ) -> tuple[Any, unroll_lib.ParticleState]:
    """``(ε, particles)``: this estimate's perturbations and the ``2 N`` particles ``[pos; neg]``
    the pairs start from (both members of a pair on the same run at the same step)."""
    raise NotImplementedError

  def pair_update(self, eps: Any, state: Any, particles: unroll_lib.ParticleState,
                  pos: unroll_lib.UnrollOutput, neg: unroll_lib.UnrollOutput
                  ) -> tuple[Any, Any]:
    """``(per-pair gradients, next state)`` from the pairs' unroll outputs and end particles."""
    raise NotImplementedError

  def unroll_pairs(self, meta_params: Any, eps: Any, particles: unroll_lib.ParticleState
                   ) -> tuple[unroll_lib.ParticleState, unroll_lib.UnrollOutput]:
    """Unrolls ``particles`` ``[pos; neg]`` with ``[θ + ε; θ − ε]``, drawing randomness per pair.

    Both members of a pair are on the same run at the same step, so the data, keys and fresh
    runs of the truncation (:func:`meta_train.unroll.draw_truncation`) are drawn for the ``N``
    ``pos`` particles and repeated: the result is bit-identical to drawing per particle at half
    the PRNG cost.

    Returns:
      ``(particles, output)`` with a leading axis of size ``2 N``.
    """
    config = self.pair_unroll
    draw_from, _ = split_pair(particles)
    draws = jax.vmap(lambda ps: unroll_lib.draw_truncation(self.family, config, ps))(draw_from)
    fn = lambda mp, ps, d: unroll_lib.unroll(self.lopt, self.family, config, mp, ps, draws=d)
    # sharding hook (meta_train/runtime/sharding.py): split the 2 N unrolls over the context mesh.
    pair_params, particles = sharding_lib.constrain_particles(
        (perturbed_pair(meta_params, eps), particles))
    return jax.vmap(fn)(pair_params, particles, repeat_pair(draws))

  def estimate(self, meta_params: Any, state: Any, key: jax.Array
               ) -> tuple[Any, Any, dict[str, jax.Array]]:
    """One antithetic estimate: perturb, unroll the pairs, per-pair gradients, combine."""
    eps, particles = self.pair_particles(meta_params, state, key)
    particles, out = self.unroll_pairs(meta_params, eps, particles)
    pos, neg = split_pair(out)
    per_pair, state = self.pair_update(eps, state, particles, pos, neg)
    grad, metrics = est_lib.combine(per_pair, jnp.mean(out.meta_loss), jnp.sum(out.nonfinite),
                                    2 * self.num_pairs * self.pair_unroll.truncation_length)
    return grad, state, metrics
