"""Persistent evolution strategies (PES): unbiased ES over truncated unrolls.

Each antithetic pair keeps two particles, one unrolled with ``θ + ε`` and one with ``θ − ε``
at every truncation, and accumulates the perturbations ``ξ_i = Σ_τ ε_{i,τ}`` that shaped its
current run (Vicol, Metz & Sohl-Dickstein 2021, arXiv 2112.13835, Algorithm 2 / Eq. 7):

.. math::
  \\xi_i \\leftarrow \\xi_i + \\epsilon_i, \\qquad
  \\hat g = \\frac1N \\sum_i \\frac{\\xi_i}{2\\sigma^2}
  \\big(L_i(\\theta+\\epsilon_i; s^+_i) - L_i(\\theta-\\epsilon_i; s^-_i)\\big)

Averaged over truncation positions the estimate is unbiased for the gradient of the
(Gaussian-smoothed) full-horizon meta-loss. When a particle starts a new run inside a truncation
its accumulator restarts from ``ε``: the losses after the reset are paired with ``ε`` alone,
those before it with ``ξ + ε``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from meta_train import unroll as unroll_lib
from meta_train.estimators import antithetic


def pes_pair_grads(eps: Any, accumulator: Any, pos_losses: jax.Array, neg_losses: jax.Array,
                   after_reset: jax.Array, sigma: float, sign_delta: float = 0.0) -> Any:
  """Per-pair PES gradients (arXiv 2112.13835, Alg. 2, with a reset inside the truncation).

  .. math::
    g_i = \\frac{\\xi_i + \\epsilon_i}{2\\sigma^2} \\frac1K \\sum_{t < r_i} \\Delta_{i,t}
        + \\frac{\\epsilon_i}{2\\sigma^2} \\frac1K \\sum_{t \\ge r_i} \\Delta_{i,t},
    \\qquad \\Delta_{i,t} = \\ell^+_{i,t} - \\ell^-_{i,t}

  where ``r_i`` is the step at which pair ``i`` starts a new run (``K`` if it does not).

  Args:
    eps: this truncation's perturbations ε with a leading pair axis.
    accumulator: the accumulated perturbations ξ of the pairs' current runs (like ``eps``).
    pos_losses: (num_pairs, K) per-step meta-losses of the ``θ + ε`` members.
    neg_losses: (num_pairs, K) per-step meta-losses of the ``θ − ε`` members.
    after_reset: (num_pairs, K) bool, the step belongs to a run begun in this truncation.
    sigma: the perturbation standard deviation σ.
    sign_delta: ``s > 0``: each pair's ``Δ`` is replaced by ``s`` times the sign of its mean
      over the truncation (:func:`~meta_train.estimators.antithetic.sign_deltas`); 0: off.

  Returns:
    Per-pair gradient estimates, shaped like ``eps``.
  """
  k = pos_losses.shape[-1]
  after = after_reset.astype(jnp.float32)
  delta = pos_losses - neg_losses
  if sign_delta:
    delta = antithetic.sign_deltas(delta, sign_delta)
  delta_before = jnp.sum(delta * (1.0 - after), axis=-1) / k
  delta_after = jnp.sum(delta * after, axis=-1) / k
  xi = jax.tree.map(jnp.add, accumulator, eps)
  return jax.tree.map(jnp.add, antithetic.antithetic_grads(xi, delta_before, sigma),
                      antithetic.antithetic_grads(eps, delta_after, sigma))


def pes_accumulate(accumulator: Any, eps: Any, reset: jax.Array) -> Any:
  """The next accumulator: ``ξ_i + ε_i``, or ``ε_i`` where pair ``i`` started a new run.

  Args:
    accumulator: accumulated perturbations ξ with a leading pair axis.
    eps: this truncation's perturbations ε (like ``accumulator``).
    reset: (num_pairs,) bool, the pair started a new run during this truncation.

  Returns:
    The accumulator for the next truncation, shaped like ``accumulator``.
  """
  xi = jax.tree.map(jnp.add, accumulator, eps)
  return jax.tree.map(
      lambda x, e: jnp.where(reset.reshape((-1,) + (1,) * (x.ndim - 1)), e, x), xi, eps)


class PESState(NamedTuple):
  """State of :class:`PES`.

  Attributes:
    particles: ``2 * num_pairs`` particles: the ``θ + ε`` members, then the ``θ − ε`` members.
    accumulator: accumulated perturbations ξ, shaped like θ with a leading ``num_pairs`` axis.
  """

  particles: unroll_lib.ParticleState
  accumulator: Any


@dataclasses.dataclass(frozen=True)
class PES(antithetic.AntitheticEstimator):
  """Persistent ES, unbiased over truncations (arXiv 2112.13835, Alg. 2).

  ``2 * num_pairs`` persistent particles; σ is the std of each truncation's perturbation.
  Other fields: those of :class:`~meta_train.estimators.antithetic.AntitheticEstimator`.
  """

  name: ClassVar[str] = "pes"

  def init(self, key: jax.Array, meta_params: Any) -> PESState:
    """Samples ``num_pairs`` staggered runs, duplicated for the two members of each pair."""
    particles = unroll_lib.init_particles(self.lopt, self.family, self.unroll, meta_params, key,
                                          self.num_pairs)
    acc = jax.tree.map(lambda t: jnp.zeros((self.num_pairs,) + jnp.shape(t), jnp.result_type(t)),
                       meta_params)
    return PESState(antithetic.repeat_pair(particles), acc)

  def pair_particles(self, meta_params, state, key):
    """``key`` draws this truncation's ε; each member continues its own particle."""
    return self.perturbation(key, meta_params), state.particles

  def pair_update(self, eps, state, particles, pos, neg):
    """PES gradients and accumulators (``after_reset``/``reset`` are the same for both members)."""
    per_pair = pes_pair_grads(eps, state.accumulator, pos.losses, neg.losses, pos.after_reset,
                              self.sigma, self.sign_delta)
    return per_pair, PESState(particles, pes_accumulate(state.accumulator, eps, pos.reset))
