"""Per-tensor step normalisation (Celo2-style): every tensor's update rescaled to a fixed RMS.

Composed between a rule and a learned schedule, the schedule alone sets the step size::

  lopt = learned_opt.chain(learned_opt.MLPOptimizer(step_mult=1.0),
                           NormalizeStep(learning_rate=5e-3), learned_opt.LearnedSchedule())

Measured negative on the shipped recipe (docs/findings.md), hence experimental.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from learned_opt import base
from learned_opt import features as feats_lib

# ε under the mean square of the normalised update.
_EPS = 1e-12


@base.register
@dataclasses.dataclass(frozen=True)
class NormalizeStep(base.LearnedOptimizer):
  """Divides each tensor's update by its RMS over the tensor and scales it by ``λ``.

  .. math::
    u \\leftarrow λ\\, u / \\sqrt{\\mathrm{mean}_{\\text{tensor}}(u^2) + ε}

  Non-finite entries count as zero in the mean (:func:`learned_opt.features.inverse_rms`), so a
  ``nan`` update stays in its entry. No meta-parameters (``{}``); each update keeps its dtype.

  Attributes:
    learning_rate: ``λ``, the RMS of every tensor's normalised update.
    horizon_aware: meta-trained seeing each run's length as ``num_steps``.

  References:
    Moudgil et al., Celo2, 2026, arXiv 2602.19142 (a normalised rule times a schedule).
  """

  name = "normalize_step"
  learning_rate: float = 5e-3
  horizon_aware: bool = False

  def __post_init__(self):
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")

  def init(self, key: jax.Array) -> base.MetaParams:
    del key
    return {}

  def scale_by(self, meta_params, *, num_steps=None):
    """``λ u / rms(u)`` per tensor as an optax transformation (stateless)."""
    del num_steps
    if meta_params != {}:
      raise ValueError(f"{self.name}: meta_params must be {{}}, got {meta_params!r}")

    def update_fn(updates, state, params=None, **extra_args):
      del params, extra_args

      def scale(u):
        if u is None or not jnp.issubdtype(jnp.asarray(u).dtype, jnp.floating):
          return u
        return (u * feats_lib.inverse_rms(u, _EPS) * self.learning_rate).astype(u.dtype)

      return jax.tree.map(scale, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
