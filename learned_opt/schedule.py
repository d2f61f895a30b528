"""A learned schedule: one global step multiplier per step, apart from the update rule.

A small network reads the step features (``tanh(t/τ - 1)`` and, with ``num_steps``, the
horizon features ``(t/T, log10(T)/5)``) and the loss features (the loss against its running
averages, :func:`learned_opt.features.loss_features`) and multiplies every incoming update by
``exp(s)``: Celo's learned scheduler (arXiv 2501.12670, Sec. 3), here as a one-hidden-layer
MLP. It is a learned optimizer of its own that composes after a rule::

  lopt = learned_opt.chain(learned_opt.MLPOptimizer(), learned_opt.LearnedSchedule())

Its output layer starts at zero, so a fresh schedule multiplies by exactly ``1``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_opt import base
from learned_opt import features as feats_lib
from learned_opt import mlp as mlp_lib
from learned_opt import networks
from learned_opt import tree_utils

# Bound on the log-multiplier ``s``: the step is scaled by at most e^±10.
LOG_CLIP = 10.0


class ScheduleState(NamedTuple):
  """State of :class:`LearnedSchedule` (one per run, not per parameter).

  Attributes:
    count: number of updates so far (int32 scalar), the step ``t`` of the step features.
    loss_emas: the uncorrected moving averages of the loss, one per
      :attr:`LearnedSchedule.loss_decays` (float32 vector).
    loss_count: number of (finite, positive) losses averaged so far (int32 scalar).
    initial_loss: the first such loss (float32 scalar; 0 while ``loss_count`` is 0).
  """

  count: jax.Array
  loss_emas: jax.Array
  loss_count: jax.Array
  initial_loss: jax.Array


@base.register
@dataclasses.dataclass(frozen=True)
class LearnedSchedule(base.LearnedOptimizer):
  """Multiplies every update by ``exp(s)``, ``s`` a learned function of the step and the loss.

  .. math::
    s = \\mathrm{clip}\\big(W_1^\\top \\mathrm{relu}(W_0^\\top [φ(t);\\ ψ(t, T);\\ f_\\ell] + b_0)
    + b_1,\\ -10,\\ 10\\big),\\qquad u \\leftarrow e^{s}\\, u

  with ``φ, ψ`` the step and horizon features and ``f_ℓ`` the loss features. Meta-parameters:
  ``{"w0": (S + L, H), "b0": (H,), "w1": (H, 1), "b1": (1,)}``, ``L = len(loss_decays) + 1``.
  :meth:`init` draws ``w0`` LeCun-normal and zeros the rest, so ``s = 0``: a fresh schedule
  leaves the updates bit for bit unchanged.

  The loss is read from ``update(..., loss=ℓ)`` (or optax's ``value=ℓ``); without it, or when it
  is non-finite or not positive, the loss features are zero and the loss statistics are left
  unchanged. Integer, boolean and ``None`` leaves pass through; each update keeps its dtype.

  Attributes:
    hidden_size: width ``H`` of the hidden ReLU layer.
    time_scales: the ``τ`` of the step features (those of the rule it follows, by default).
    loss_decays: the decays ``β`` of the loss's moving averages.
    horizon_aware: meta-trained seeing each run's length as ``num_steps``.

  Example::

    lopt = learned_opt.chain(learned_opt.MLPOptimizer(), learned_opt.LearnedSchedule())
    tx = lopt.transform(lopt.init(jax.random.key(0)), num_steps=1000)
    updates, state = tx.update(grads, state, params, loss=loss)

  References:
    Moudgil et al., *Celo: Training Versatile Learned Optimizers on a Compute Diet*, 2025,
    arXiv 2501.12670 (Sec. 3, the learned scheduler).
  """

  name = "schedule"
  hidden_size: int = 8
  time_scales: tuple[float, ...] = mlp_lib.MLPOptimizer.time_scales
  loss_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
  horizon_aware: bool = False

  def __post_init__(self):
    networks.check_hidden_size(self.hidden_size)
    object.__setattr__(self, "time_scales", feats_lib.check_time_scales(self.time_scales))
    object.__setattr__(self, "loss_decays", feats_lib.check_loss_decays(self.loss_decays))
    if not isinstance(self.horizon_aware, bool):
      raise ValueError(f"horizon_aware must be a bool, got {self.horizon_aware!r}")

  @property
  def num_inputs(self) -> int:
    """The step features, the horizon features and the loss features."""
    return len(self.time_scales) + feats_lib.NUM_HORIZON_FEATURES + len(self.loss_decays) + 1

  def init(self, key: jax.Array) -> base.MetaParams:
    """LeCun-normal ``w0``, zero ``b0``, and a zero output layer (``s = 0``)."""
    return networks.head_init(key, self.num_inputs, self.hidden_size)

  def _check_meta_params(self, meta_params) -> None:
    base.check_meta_params(self.name, meta_params,
                           networks.head_shapes(self.num_inputs, self.hidden_size))

  def log_multiplier(self, meta_params, step, num_steps, loss_feats: jax.Array) -> jax.Array:
    """The float32 scalar ``s`` of step ``step`` (the step is scaled by ``e^s``)."""
    shared = jnp.concatenate([feats_lib.tanh_time_features(step, self.time_scales),
                              feats_lib.horizon_features(step, num_steps)])
    s = networks.head(meta_params, jnp.concatenate([shared, loss_feats.astype(shared.dtype)]))
    return jnp.clip(s, -LOG_CLIP, LOG_CLIP)

  def scale_by(self, meta_params, *, num_steps=None):
    """The scheduled updates ``e^s u`` as an optax transformation.

    Args:
      meta_params: from :meth:`init`, meta-training or :func:`learned_opt.load`.
      num_steps: the run's total number of updates (enables the horizon features), or None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` reading ``loss=`` (or ``value=``) and
      ignoring other keywords; ``params`` is not needed.
    """
    self._check_meta_params(meta_params)

    def init_fn(params):
      del params
      return ScheduleState(count=jnp.zeros([], jnp.int32),
                           loss_emas=jnp.zeros((len(self.loss_decays),), jnp.float32),
                           loss_count=jnp.zeros([], jnp.int32),
                           initial_loss=jnp.zeros([], jnp.float32))

    def update_fn(updates, state, params=None, **extra_args):
      # Params are not read, but a params tree that is another model's is an error.
      tree_utils.check_trees(self.name, updates, ("params", params))
      loss = extra_args.get("loss", extra_args.get("value"))
      loss_feats, emas, n_loss, initial = feats_lib.loss_features(
          loss, state.loss_emas, state.loss_count, state.initial_loss, self.loss_decays)
      multiplier = jnp.exp(self.log_multiplier(meta_params, state.count, num_steps,
                                               loss_feats))

      def scale(u):
        if u is None or not jnp.issubdtype(jnp.asarray(u).dtype, jnp.floating):
          return u
        return u * multiplier.astype(u.dtype)

      new_state = ScheduleState(count=optax.safe_increment(state.count), loss_emas=emas,
                                loss_count=n_loss, initial_loss=initial)
      return jax.tree.map(scale, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
