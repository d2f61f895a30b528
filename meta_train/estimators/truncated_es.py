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
from typing import Any, ClassVar, NamedTuple

import jax

from meta_train import unroll as unroll_lib
from meta_train.estimators import antithetic


def es_pair_grads(eps: Any, pos_loss: jax.Array, neg_loss: jax.Array, sigma: float,
                  sign_delta: float = 0.0) -> Any:
  """Per-pair antithetic ES gradients ``ε_i (L⁺_i − L⁻_i) / (2σ²)`` (arXiv 2112.13835, Eq. 3).

  Args:
    eps: the perturbations ε with a leading pair axis.
    pos_loss: (num_pairs,) meta-losses ``L⁺_i`` of the ``θ + ε_i`` members.
    neg_loss: (num_pairs,) meta-losses ``L⁻_i`` of the ``θ − ε_i`` members.
    sigma: the perturbation standard deviation σ.
    sign_delta: ``s > 0``: ``s · sign(L⁺_i − L⁻_i)`` replaces the difference
      (:func:`~meta_train.estimators.antithetic.sign_deltas`); 0: off.

  Returns:
    Per-pair gradient estimates, shaped like ``eps``.
  """
  delta = pos_loss - neg_loss
  if sign_delta:
    delta = antithetic.sign_deltas(delta, sign_delta)
  return antithetic.antithetic_grads(eps, delta, sigma)


class TruncatedESState(NamedTuple):
  """State of :class:`TruncatedES`: one particle per pair (leading axis ``num_pairs``)."""

  particles: unroll_lib.ParticleState


@dataclasses.dataclass(frozen=True)
class TruncatedES(antithetic.AntitheticEstimator):
  """Antithetic ES on truncated unrolls.

  Fields: those of :class:`~meta_train.estimators.antithetic.AntitheticEstimator`.
  """

  name: ClassVar[str] = "es"

  def init(self, key: jax.Array, meta_params: Any) -> TruncatedESState:
    """Samples ``num_pairs`` staggered particles."""
    return TruncatedESState(unroll_lib.init_particles(
        self.lopt, self.family, self.unroll, meta_params, key, self.num_pairs))

  def pair_particles(self, meta_params, state, key):
    """``key`` draws ε; both members of pair ``i`` start from particle ``i``."""
    return self.perturbation(key, meta_params), antithetic.repeat_pair(state.particles)

  def pair_update(self, eps, state, particles, pos, neg):
    """ES gradients; each particle continues from its ``θ + ε`` branch."""
    del state
    pos_particles, _ = antithetic.split_pair(particles)
    return (es_pair_grads(eps, pos.meta_loss, neg.meta_loss, self.sigma, self.sign_delta),
            TruncatedESState(pos_particles))
