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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from meta_train import estimator as est_lib
from meta_train import unroll as unroll_lib


class PESState(NamedTuple):
  """State of :class:`PES`.

  Attributes:
    particles: ``2 * num_pairs`` particles: the ``θ + ε`` members, then the ``θ − ε`` members.
    accumulator: accumulated perturbations ξ, shaped like θ with a leading ``num_pairs`` axis.
  """

  particles: unroll_lib.ParticleState
  accumulator: Any


@dataclasses.dataclass(frozen=True)
class PES(est_lib.Estimator):
  """Persistent evolution strategies (arXiv 2112.13835, Alg. 2) with antithetic pairs.

  Attributes:
    num_pairs: antithetic pairs (``2 * num_pairs`` persistent particles).
    sigma: standard deviation of each truncation's perturbation ε.
  """

  num_pairs: int = 8
  sigma: float = 0.01
  name = "pes"

  def __post_init__(self):
    est_lib.check_pairs_sigma(self)

  def init(self, key: jax.Array, meta_params: Any) -> PESState:
    """Samples ``num_pairs`` staggered runs, duplicated for the two members of each pair."""
    self._check_bound()
    particles = unroll_lib.init_particles(self.lopt, self.family, self.unroll, meta_params, key,
                                          self.num_pairs)
    acc = jax.tree.map(lambda t: jnp.zeros((self.num_pairs,) + jnp.shape(t), jnp.result_type(t)),
                       meta_params)
    return PESState(est_lib.repeat_pair(particles), acc)

  def estimate(self, meta_params, state, key):
    """One PES estimate; ``key`` draws this truncation's perturbations."""
    self._check_bound()
    eps = est_lib.antithetic_perturbation(key, meta_params, self.sigma, self.num_pairs)
    particles, out = self._unroll_pairs(est_lib.perturbed_pair(meta_params, eps),
                                        state.particles)
    pos, neg = est_lib.split_pair(out)
    k = self.unroll.truncation_length
    after = pos.after_reset.astype(jnp.float32)  # identical for both members (same runs)
    delta = pos.losses - neg.losses
    delta_before = jnp.sum(delta * (1.0 - after), axis=-1) / k
    delta_after = jnp.sum(delta * after, axis=-1) / k
    xi = jax.tree.map(jnp.add, state.accumulator, eps)
    per_pair = jax.tree.map(jnp.add, est_lib.es_grads(xi, delta_before, self.sigma),
                            est_lib.es_grads(eps, delta_after, self.sigma))
    reset = pos.reset
    new_acc = jax.tree.map(
        lambda x, e: jnp.where(reset.reshape((-1,) + (1,) * (x.ndim - 1)), e, x), xi, eps)
    grad, metrics = est_lib.combine(per_pair, jnp.mean(out.meta_loss), jnp.sum(out.nonfinite),
                                    2 * self.num_pairs * k)
    return grad, PESState(particles, new_acc), metrics
