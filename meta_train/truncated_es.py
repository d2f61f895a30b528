"""Antithetic evolution strategies over truncated unrolls (truncated ES).

.. math::
  \\hat g = \\frac1N \\sum_{i=1}^N \\frac{\\epsilon_i}{2\\sigma^2}
  \\big(L_i(\\theta+\\epsilon_i; s_i) - L_i(\\theta-\\epsilon_i; s_i)\\big),
  \\qquad \\epsilon_i \\sim \\mathcal N(0, \\sigma^2 I)

Both members of a pair start from the same particle state ``s_i`` and see the same data; the
particle then continues from the ``θ + ε`` branch. Like TBPTT it ignores θ's effect on ``s_i``,
so it carries truncation bias; unlike TBPTT it smooths the loss surface and needs no backprop.

References:
  Salimans et al., "Evolution strategies as a scalable alternative to reinforcement learning",
  2017, arXiv 1703.03864; Vicol et al. 2021, arXiv 2112.13835, Eq. 3.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from meta_train import estimator as est_lib
from meta_train import unroll as unroll_lib


class TruncatedESState(NamedTuple):
  """State of :class:`TruncatedES`: one particle per pair (leading axis ``num_pairs``)."""

  particles: unroll_lib.ParticleState


@dataclasses.dataclass(frozen=True)
class TruncatedES(est_lib.Estimator):
  """Antithetic ES on truncated unrolls.

  Attributes:
    num_pairs: antithetic pairs per estimate (``2 * num_pairs`` unrolls).
    sigma: standard deviation of the perturbation ε.
  """

  num_pairs: int = 8
  sigma: float = 0.01
  name = "es"

  def __post_init__(self):
    est_lib.check_pairs_sigma(self)

  def init(self, key: jax.Array, meta_params: Any) -> TruncatedESState:
    """Samples ``num_pairs`` staggered particles."""
    self._check_bound()
    return TruncatedESState(unroll_lib.init_particles(
        self.lopt, self.family, self.unroll, meta_params, key, self.num_pairs))

  def estimate(self, meta_params, state, key):
    """One antithetic truncated-ES estimate; ``key`` draws the perturbations."""
    self._check_bound()
    eps = est_lib.antithetic_perturbation(key, meta_params, self.sigma, self.num_pairs)
    particles, out = self._unroll_pairs(est_lib.perturbed_pair(meta_params, eps),
                                        est_lib.repeat_pair(state.particles), state.particles)
    pos_out, neg_out = est_lib.split_pair(out)
    per_pair = est_lib.es_grads(eps, pos_out.meta_loss - neg_out.meta_loss, self.sigma)
    grad, metrics = est_lib.combine(
        per_pair, jnp.mean(out.meta_loss), jnp.sum(out.nonfinite),
        2 * self.num_pairs * self.unroll.truncation_length)
    pos_particles, _ = est_lib.split_pair(particles)
    return grad, TruncatedESState(pos_particles), metrics
