"""A fixed warm-up + cosine decay over the run, composed after a rule: Celo's first phase.

Celo meta-trains its rule under a fixed, hand-designed schedule before it learns one (Moudgil et
al., arXiv 2501.12670, Sec. 3). This piece is that schedule: the rule decides each step, the
piece anneals it to ``final_fraction`` of its size by the run's last step, as tuned cosine Adam
does by construction::

  lopt = learned_opt.chain(learned_opt.MLPOptimizer(horizon_aware=True),
                           learned_opt.CosineDecay())
  tx = lopt.transform(theta, num_steps=1000)   # decays over the run's 1,000 updates
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_opt import base
from learned_opt import tree_utils


class CosineDecayState(NamedTuple):
  """State of :class:`CosineDecay`: ``count``, the number of updates so far (int32 scalar)."""

  count: jax.Array


def cosine_factor(step: Any, num_steps: Any, warmup_fraction: float,
                  final_fraction: float) -> jax.Array:
  """The float32 multiplier of update ``step`` (0-based) of a run of ``num_steps`` updates.

  .. math::
    f(t) = \\begin{cases} (t + 1) / W & t < W \\\\
      φ + (1 - φ)\\,\\tfrac12 \\big(1 + \\cos(π \\min(1, \\tfrac{t - W}{T - W}))\\big) & t \\ge W
    \\end{cases}

  with ``W = ceil(warmup_fraction · T)`` (no warm-up when 0) and ``φ = final_fraction``: the
  first update already has a non-zero size, and the last one is ``φ`` plus a sliver. ``T`` may
  be traced (meta-training gives each particle its own horizon).
  """
  t = jnp.asarray(step, jnp.float32)
  n = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
  warmup = jnp.ceil(warmup_fraction * n) if warmup_fraction > 0 else jnp.zeros([], jnp.float32)
  ramp = (t + 1.0) / jnp.maximum(warmup, 1.0)
  frac = jnp.clip((t - warmup) / jnp.maximum(n - warmup, 1.0), 0.0, 1.0)
  # ½(1 + cos πx) as cos²(πx/2): no cancellation near the end, where the factor is small.
  cosine = final_fraction + (1.0 - final_fraction) * jnp.square(jnp.cos(0.5 * jnp.pi * frac))
  return jnp.where(t < warmup, ramp, cosine)


@base.register
@dataclasses.dataclass(frozen=True)
class CosineDecay(base.LearnedOptimizer):
  """Multiplies every update by a fixed warm-up + cosine factor of the step and a learned ``e^β``.

  .. math::
    u \\leftarrow e^{β} f(t;\\ T)\\, u

  with ``f`` :func:`cosine_factor`. ``θ = {"log_scale": β}``, started at 0; the shape of the
  schedule is fixed (it has no other meta-parameter), so meta-training learns the rule under it,
  as in Celo's first phase. Without ``num_steps`` there is no run to decay over (``T = ∞``, as
  a horizon-aware rule's horizon features are zero then): the factor is ``e^β`` at every step,
  and :func:`learned_opt.pretrained` and the torch optimizer warn that the run's length is
  missing, as for any horizon-aware file. ``params`` is not read. Integer leaves and ``None``
  pass; each update keeps its dtype.

  Attributes:
    warmup_fraction: share of the run spent ramping linearly up to the full step (``[0, 1)``).
    final_fraction: the factor the decay ends at (``[0, 1]``; 0 is cosine Adam's decay to zero).

  References:
    Loshchilov & Hutter, *SGDR*, arXiv 1608.03983 (the cosine decay);
    Moudgil et al., *Celo*, 2025, arXiv 2501.12670, Sec. 3 (a rule trained under a fixed
    schedule, then a learned one).
  """

  name = "cosine_decay"
  # The run's length is its input: a file with this part is used with ``num_steps``.
  horizon_aware = True
  warmup_fraction: float = 0.0
  final_fraction: float = 0.0

  def __post_init__(self):
    w, f = self.warmup_fraction, self.final_fraction
    if not (isinstance(w, (int, float)) and not isinstance(w, bool) and 0.0 <= w < 1.0):
      raise ValueError(f"warmup_fraction must be a number in [0, 1), got {w!r}")
    if not (isinstance(f, (int, float)) and not isinstance(f, bool) and 0.0 <= f <= 1.0):
      raise ValueError(f"final_fraction must be a number in [0, 1], got {f!r}")

  def init(self, key: jax.Array) -> base.MetaParams:
    del key
    return {"log_scale": jnp.zeros([], jnp.float32)}

  def scale_by(self, meta_params, *, num_steps=None):
    """``e^β f(t; T) u`` as an optax transformation (``T = num_steps``; ``e^β u`` without it)."""
    base.check_meta_params(self.name, meta_params, {"log_scale": ()})
    scale = jnp.exp(jnp.asarray(meta_params["log_scale"], jnp.float32))

    def update_fn(updates, state, params=None, **extra_args):
      del extra_args
      tree_utils.check_trees(self.name, updates, ("params", params))
      if num_steps is None:  # no length, no schedule: T = ∞ (as zero horizon features)
        factor = scale
      else:
        factor = scale * cosine_factor(state.count, num_steps, self.warmup_fraction,
                                       self.final_fraction)

      def one(u):
        if u is None or not jnp.issubdtype(jnp.asarray(u).dtype, jnp.floating):
          return u
        return u * factor.astype(u.dtype)

      new_state = CosineDecayState(count=optax.safe_increment(state.count))
      return jax.tree.map(one, updates, is_leaf=lambda x: x is None), new_state

    return optax.GradientTransformationExtraArgs(
        lambda params: CosineDecayState(count=jnp.zeros([], jnp.int32)), update_fn)
