"""Truncated backpropagation through time (TBPTT) over truncated unrolls.

.. math::
  \\hat g = \\frac1N \\sum_{i=1}^N \\nabla_\\theta \\frac1K \\sum_{t=\\tau_i}^{\\tau_i+K-1}
  \\ell_t\\big(\\theta;\\ \\mathrm{sg}(s_{\\tau_i})\\big)

Each particle's state at the start of the truncation is held fixed (stop-gradient), so the
estimate ignores how θ shaped that state: it is cheap and low-variance but biased towards
greedy, short-horizon behaviour.

References:
  Werbos, "Backpropagation through time", 1990; Wu et al., "Understanding short-horizon bias
  in stochastic meta-optimization", 2018, arXiv 1803.02021; Vicol et al. 2021, arXiv
  2112.13835, Sec. 2 (truncation bias).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from meta_train import errors
from meta_train import unroll as unroll_lib
from meta_train.estimators import estimator as est_lib


class TBPTTState(NamedTuple):
  """State of :class:`TBPTT`: the particles (leading axis ``num_particles``)."""

  particles: unroll_lib.ParticleState


@dataclasses.dataclass(frozen=True)
class TBPTT(est_lib.Estimator):
  """Truncated backpropagation through time.

  Attributes:
    num_particles: independent inner trainings averaged per estimate.
  """

  num_particles: int = 8
  name: ClassVar[str] = "tbptt"

  def __post_init__(self):
    super().__post_init__()
    errors.check_positive_int(type(self).__name__, "num_particles", self.num_particles)

  def init(self, key: jax.Array, meta_params: Any) -> TBPTTState:
    """Samples ``num_particles`` staggered particles."""
    return TBPTTState(unroll_lib.init_particles(self.lopt, self.family, self.unroll, meta_params,
                                                key, self.num_particles))

  def estimate(self, meta_params, state, key):
    """One TBPTT estimate; ``key`` is unused (all randomness lives in the particles)."""
    del key

    def loss_fn(mp, ps):
      ps = jax.lax.stop_gradient(ps)
      new_ps, out = unroll_lib.unroll(self.lopt, self.family, self.unroll, mp, ps)
      return out.meta_loss, (new_ps, out)

    grads, (particles, out) = jax.vmap(jax.grad(loss_fn, has_aux=True), in_axes=(None, 0))(
        meta_params, state.particles)
    grad, metrics = est_lib.combine(
        grads, jnp.mean(out.meta_loss), jnp.sum(out.nonfinite),
        self.num_particles * self.unroll.truncation_length)
    return grad, TBPTTState(particles), metrics
