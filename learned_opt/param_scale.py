"""A step measured against the parameter's own scale (VeLO's and Celo's parameter-scale factor).

Composed after a rule, each tensor's step is multiplied by the tensor's RMS (at least a floor),
so a quadratic's parameters of order 1 and a classifier's of order 0.05 get steps of their own
order from the same rule::

  lopt = learned_opt.chain(learned_opt.MLPOptimizer(), learned_opt.ParamScale())

With ``at_init=True`` the RMS is read once, from the parameters the optimizer's ``init``
receives, and held in its state: the prior stays, and a tensor that grows during a long run does
not get a growing step (the feedback that made the per-step reading diverge at 10x the horizon,
``reports/experiments/LOG.md`` #118/#119). With ``kernels=False`` tensors of 3 or more axes
(conv kernels) pass unchanged. It was built because the held scale cost the conv nets (#144),
but it does not bring them back (#146): their tensors start below the floor, where the factor
is about 1 either way.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_opt import base
from learned_opt import features as feats_lib
from learned_opt import tree_utils


@base.register
@dataclasses.dataclass(frozen=True)
class ParamScale(base.LearnedOptimizer):
  """Multiplies each tensor's update by ``max(rms(p), floor)`` and a learned ``e^β``.

  .. math::
    u \\leftarrow u \\cdot \\max\\big(\\mathrm{rms}(p),\\ ρ_0\\big) \\cdot e^{β}

  ``rms`` counts the tensor's non-finite entries as zero; it is the current parameters' at
  each step, or with ``at_init`` the parameters' at ``init`` (a float32 scalar per tensor in
  the state, so the run's step has no feedback from the parameters' growth);
  ``θ = {"log_scale": β}``, started at ``-log(reference_rms)`` so that a tensor of RMS
  ``reference_rms`` gets the rule's step unchanged. With ``kernels=False`` a tensor of 3 or
  more axes (a conv kernel) keeps the rule's step (no scale and no ``e^β``). Needs ``params``
  at each update unless ``at_init``; integer leaves and
  ``None`` pass; each update keeps its dtype; a ``nan`` stays in its entry.

  Attributes:
    reference_rms: the parameter RMS whose step the start leaves unchanged.
    floor: ``ρ_0``, the least scale (a zero-initialised bias still moves).
    at_init: read ``rms(p)`` once, at ``init``, instead of at every step.
    kernels: scale tensors of 3 or more axes too (``False``: they pass unchanged).
    horizon_aware: meta-trained seeing each run's length as ``num_steps`` (unused here).

  References:
    Metz et al., VeLO, 2022, arXiv 2211.09760, Sec. 3 (steps scaled by the parameter's norm);
    Moudgil et al., Celo, 2025, arXiv 2501.12670.
  """

  name = "param_scale"
  reference_rms: float = 0.1
  floor: float = 1e-2
  at_init: bool = False
  kernels: bool = True
  horizon_aware: bool = False

  def __post_init__(self):
    for field in ("reference_rms", "floor"):
      value = getattr(self, field)
      if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{field} must be a finite number > 0, got {value!r}")
    for field in ("at_init", "kernels"):
      if not isinstance(getattr(self, field), bool):
        raise ValueError(f"{field} must be a bool, got {getattr(self, field)!r}")

  def init(self, key: jax.Array) -> base.MetaParams:
    del key
    return {"log_scale": jnp.asarray(-math.log(self.reference_rms), jnp.float32)}

  def scale_by(self, meta_params, *, num_steps=None):
    """``u max(rms(p), floor) e^β`` per tensor as an optax transformation (stateless, or with
    ``at_init`` holding each tensor's scale)."""
    del num_steps
    base.check_meta_params(self.name, meta_params, {"log_scale": ()})
    factor = jnp.exp(meta_params["log_scale"])

    def scale_of(p):
      """``max(rms(p), floor)`` as a float32 scalar (0 for an integer leaf, which passes)."""
      p = jnp.asarray(p)
      if not jnp.issubdtype(p.dtype, jnp.floating):
        return jnp.zeros((), jnp.float32)
      q = feats_lib.finite_or_zero(p.astype(jnp.promote_types(p.dtype, jnp.float32)))
      # sqrt(max(mean p², ρ0²)): no 0/0 in a derivative through a zero tensor.
      return jnp.sqrt(jnp.maximum(jnp.mean(q * q), self.floor ** 2))

    def one(u, scale):
      if u is None or not jnp.issubdtype(jnp.asarray(u).dtype, jnp.floating):
        return u
      if not self.kernels and jnp.ndim(u) >= 3:  # a conv kernel keeps the rule's step
        return u
      return (u * (scale * factor)).astype(u.dtype)

    def init_fn(params):
      if not self.at_init:
        return optax.EmptyState()
      return ParamScaleState(scales=jax.tree.map(scale_of, params))

    def update_fn(updates, state, params=None, **extra_args):
      del extra_args
      if self.at_init:
        tree_utils.check_trees(self.name, updates, ("state", state.scales))
        scales = state.scales
      else:
        tree_utils.require_params(self.name, params)
        tree_utils.check_trees(self.name, updates, ("params", params))
        scales = jax.tree.map(scale_of, params)  # None leaves stay None
      return jax.tree.map(one, updates, scales, is_leaf=lambda x: x is None), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ParamScaleState(NamedTuple):
  """:class:`ParamScale`'s state with ``at_init``: ``max(rms(p), floor)`` of each tensor at
  ``init`` (float32 scalars in the parameters' tree)."""
  scales: Any
