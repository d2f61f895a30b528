"""A learned per-tensor learning-rate controller: relative changes to each tensor's step size.

After a hand-designed rule (Adam), a small network reads unit-free statistics of each parameter
tensor (how the update turns, how large the step is against the parameter, the tensor's own
log learning rate) and of the run (the step, the horizon, the loss against its averages), and
moves that tensor's log learning rate ``ℓ`` by a bounded amount each step:

.. math::
  ℓ_{t+1} = \\mathrm{clip}\\big(ℓ_t + m \\tanh a_t,\\ -L,\\ L\\big),\\qquad
  u_t \\leftarrow e^{ℓ_{t+1}}\\, u_t

It is a learned optimizer of its own that composes after a rule::

  lopt = learned_opt.chain(learned_opt.Adam(initial_learning_rate=0.015),
                           learned_opt.TensorController())

This is the learned hyper-parameter optimizer of LHOPT (Almeida et al., arXiv 2106.00958,
Sec. 3): a small policy over unit-free features making *relative* changes to each parameter
group's hyper-parameters of an inner Adam, so few meta-parameters suffice. Unlike LHOPT, its
actions are continuous, act on the learning rate only (LHOPT also moves Adam's β's, ε and the
weight decay, and restarts), and it is meta-trained by evolution strategies, not by PPO. Its
output layer starts at zero, so a fresh controller leaves the updates bit for bit unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_opt import base
from learned_opt import features as feats_lib
from learned_opt import mlp as mlp_lib
from learned_opt import networks
from learned_opt import tree_utils

#: Number of per-tensor features: the cosine to the previous update, the log relative step
#: size, and the tensor's log learning rate (:meth:`TensorController.tensor_features`).
NUM_TENSOR_FEATURES = 3
#: Added to ``RMS(p)`` under the relative step size, so a zero tensor (a fresh bias) gives a
#: finite feature.
PARAM_RMS_FLOOR = 1e-3
#: Bound on the log10 relative step-size feature.
STEP_FEATURE_CLIP = 5.0
# ``e^80`` is still a float32: a larger log_clip could overflow the step multiplier.
_MAX_LOG_CLIP = 80.0


class ControllerState(NamedTuple):
  """State of :class:`TensorController`.

  Attributes:
    count: number of updates so far (int32 scalar), the step ``t`` of the step features.
    loss_emas: the uncorrected moving averages of the loss, one per
      :attr:`TensorController.loss_decays` (float32 vector), as :class:`LearnedSchedule` keeps
      them (:func:`learned_opt.features.loss_features`).
    loss_count: number of (finite, positive) losses averaged so far (int32 scalar).
    initial_loss: the first such loss (float32 scalar; 0 while ``loss_count`` is 0).
    log_lr: per parameter tensor, its log learning rate ``ℓ`` (a float32 scalar, 0 at the
      start); the empty placeholder for integer and boolean leaves.
    prev: per parameter tensor, the previous incoming update with its non-finite entries
      zeroed (float32, the tensor's shape, zeros at the start); the placeholder for integer
      and boolean leaves.
  """

  count: jax.Array
  loss_emas: jax.Array
  loss_count: jax.Array
  initial_loss: jax.Array
  log_lr: optax.Updates
  prev: optax.Updates


def _is_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


@base.register
@dataclasses.dataclass(frozen=True)
class TensorController(base.LearnedOptimizer):
  """Scales each tensor's update by ``e^ℓ``, ``ℓ`` moved every step by a learned policy.

  For every floating parameter tensor ``i``, with incoming update ``u`` (the previous part's),
  previous incoming update ``v`` and parameter ``p``:

  .. math::
    c_i &= \\frac{\\overline{u v}}{\\sqrt{\\overline{u^2}\\ \\overline{v^2}}}\\quad
    (0 \\text{ if either is } 0),\\qquad
    r_i = \\mathrm{clip}\\Big(\\log_{10}
    \\frac{\\mathrm{RMS}(e^{ℓ_i} u)}{\\mathrm{RMS}(p) + 10^{-3}},\\ -5,\\ 5\\Big) \\\\
    a_i &= W_1^\\top \\mathrm{relu}\\big(W_0^\\top [c_i;\\ r_i;\\ ℓ_i;\\ φ(t);\\ ψ(t, T);\\
    f_\\ell] + b_0\\big) + b_1 \\\\
    ℓ_i &\\leftarrow \\mathrm{clip}\\big(ℓ_i + m \\tanh a_i,\\ -L,\\ L\\big),\\qquad
    u \\leftarrow e^{ℓ_i}\\, u

  with ``φ, ψ`` the step and horizon features and ``f_ℓ`` the loss features of
  :class:`~learned_opt.schedule.LearnedSchedule`, ``m`` :attr:`max_change` and ``L``
  :attr:`log_clip`. The network is shared by all tensors. The change applies to this step:
  the features read ``ℓ_t`` (``r_i`` is the relative size of the step the current rate would
  take) and the update is scaled by ``e^{ℓ_{t+1}}``. Meta-parameters:
  ``{"w0": (F, H), "b0": (H,), "w1": (H, 1), "b1": (1,)}`` with
  ``F = 3 + len(time_scales) + 2 + len(loss_decays) + 1``; :meth:`init` draws ``w0``
  LeCun-normal and zeros the rest, so ``a = 0``, ``ℓ`` stays 0 and a fresh controller leaves
  the updates bit for bit unchanged.

  ``update`` needs ``params`` (``r_i`` reads them) and reads the loss from ``loss=`` (or
  optax's ``value=``) as the schedule does. Integer, boolean and ``None`` leaves pass through;
  each update keeps its dtype. Non-finite entries of an update or parameter count as zero in
  every feature and are stored as zero in ``prev``, so they keep their (non-finite) value in
  the step, the other entries of that tensor and every other tensor get what they would
  without them, and the state stays finite.

  Attributes:
    hidden_size: width ``H`` of the hidden ReLU layer.
    time_scales: the ``τ`` of the step features (those of the MLP rule, by default).
    loss_decays: the decays ``β`` of the loss's moving averages.
    max_change: ``m``, the largest change of a log learning rate in one step.
    log_clip: ``L``, the bound on each log learning rate (the step is scaled by at most
      ``e^±L``).
    horizon_aware: meta-trained seeing each run's length as ``num_steps``.

  Example::

    lopt = learned_opt.chain(learned_opt.Adam(initial_learning_rate=0.015),
                             learned_opt.TensorController())
    tx = lopt.transform(lopt.init(jax.random.key(0)), num_steps=1000)
    updates, state = tx.update(grads, state, params, loss=loss)

  References:
    Almeida et al., *A Generalizable Approach to Learning Optimizers*, 2021, arXiv 2106.00958
    (LHOPT, Sec. 3: relative hyper-parameter actions from unit-free features).
  """

  name = "controller"
  hidden_size: int = 8
  time_scales: tuple[float, ...] = mlp_lib.MLPOptimizer.time_scales
  loss_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
  max_change: float = 0.1
  log_clip: float = 10.0
  horizon_aware: bool = False

  def __post_init__(self):
    networks.check_hidden_size(self.hidden_size)
    object.__setattr__(self, "time_scales", feats_lib.check_time_scales(self.time_scales))
    object.__setattr__(self, "loss_decays", feats_lib.check_loss_decays(self.loss_decays))
    if not (_is_number(self.max_change) and self.max_change > 0):
      raise ValueError(f"max_change must be a finite number > 0, got {self.max_change!r}")
    if not (_is_number(self.log_clip) and 0 < self.log_clip <= _MAX_LOG_CLIP):
      raise ValueError(f"log_clip must be a number in (0, {_MAX_LOG_CLIP:g}], got "
                       f"{self.log_clip!r}")
    if not isinstance(self.horizon_aware, bool):
      raise ValueError(f"horizon_aware must be a bool, got {self.horizon_aware!r}")

  @property
  def num_inputs(self) -> int:
    """The per-tensor features, the step, horizon and loss features."""
    return (NUM_TENSOR_FEATURES + len(self.time_scales) + feats_lib.NUM_HORIZON_FEATURES
            + len(self.loss_decays) + 1)

  def init(self, key: jax.Array) -> base.MetaParams:
    """LeCun-normal ``w0``, zero ``b0``, and a zero output layer (``a = 0``)."""
    return networks.head_init(key, self.num_inputs, self.hidden_size)

  def _check_meta_params(self, meta_params) -> None:
    base.check_meta_params(self.name, meta_params,
                           networks.head_shapes(self.num_inputs, self.hidden_size))

  @staticmethod
  def tensor_features(u: jax.Array, p: jax.Array, prev: jax.Array,
                      log_lr: jax.Array) -> jax.Array:
    """The per-tensor features ``(c, r, ℓ)`` of one tensor (see the class docstring).

    Non-finite entries of ``u`` and ``p`` count as zero; a zero-size tensor, or an overflow
    of a mean square, gives zero features. Each is finite.

    Args:
      u: the incoming update of the tensor, non-finite entries already zeroed.
      p: the parameter tensor (same shape).
      prev: the previous incoming update (same shape; zeros at the first step).
      log_lr: the tensor's current log learning rate ``ℓ_t`` (a scalar).

    Returns:
      A float32 (or wider) vector of :data:`NUM_TENSOR_FEATURES` entries.
    """
    dtype = jnp.promote_types(u.dtype, jnp.float32)
    u = u.astype(dtype)
    v = prev.astype(dtype)
    q = feats_lib.finite_or_zero(p.astype(jnp.promote_types(p.dtype, dtype)))
    uv, uu, vv, pp = feats_lib.tensor_means([u * v, u * u, v * v, (q * q).astype(dtype)])
    # Cosine: both mean squares guarded (no 0/0, no infinite derivative at the first step).
    ok = (uu > 0) & (vv > 0)
    cos = uv * jax.lax.rsqrt(jnp.where(ok, uu, 1.0)) * jax.lax.rsqrt(jnp.where(ok, vv, 1.0))
    cos = jnp.where(ok, jnp.clip(cos, -1.0, 1.0), 0.0)
    # log10(RMS(e^ℓ u) / (RMS(p) + floor)), the e^ℓ taken out of the mean (no overflow);
    # the ε under each square root keeps the derivative at a zero tensor finite.
    log_lr = jnp.asarray(log_lr).astype(dtype)
    eps = feats_lib.LOG_RMS_EPS
    ratio = (log_lr / math.log(10.0) + 0.5 * jnp.log10(uu + eps)
             - jnp.log10(jnp.sqrt(pp + eps) + PARAM_RMS_FLOOR))
    ratio = jnp.clip(ratio, -STEP_FEATURE_CLIP, STEP_FEATURE_CLIP)
    return feats_lib.finite_or_zero(jnp.stack([cos, ratio, log_lr]))

  def shared_features(self, step, num_steps, loss_feats: jax.Array) -> jax.Array:
    """The features every tensor shares: ``[φ(t); ψ(t, T); f_ℓ]`` (float32)."""
    return jnp.concatenate([feats_lib.tanh_time_features(step, self.time_scales),
                            feats_lib.horizon_features(step, num_steps),
                            loss_feats.astype(jnp.float32)])

  def log_lr_change(self, meta_params, tensor_feats: jax.Array,
                    shared: jax.Array) -> jax.Array:
    """The scalar ``Δ = m tanh(a)`` of one tensor, in float32 (or the meta-parameters' wider
    float type)."""
    dtype = jnp.promote_types(meta_params["w0"].dtype, jnp.float32)
    a = networks.head(meta_params, jnp.concatenate([tensor_feats.astype(dtype),
                                                    shared.astype(dtype)]))
    return self.max_change * jnp.tanh(a.astype(dtype))

  def scale_by(self, meta_params, *, num_steps=None):
    """The controlled updates ``e^ℓ u`` as an optax transformation.

    Args:
      meta_params: from :meth:`init`, meta-training or :func:`learned_opt.load`.
      num_steps: the run's total number of updates (enables the horizon features), or None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that requires ``params``, reads ``loss=``
      (or ``value=``) and ignores other keywords.
    """
    self._check_meta_params(meta_params)
    dtype = jnp.promote_types(meta_params["w0"].dtype, jnp.float32)

    def init_fn(params):
      log_lr = lambda p: (jnp.zeros([], jnp.float32) if tree_utils.is_float(p)
                          else tree_utils.placeholder())
      return ControllerState(count=jnp.zeros([], jnp.int32),
                             loss_emas=jnp.zeros((len(self.loss_decays),), jnp.float32),
                             loss_count=jnp.zeros([], jnp.int32),
                             initial_loss=jnp.zeros([], jnp.float32),
                             log_lr=jax.tree.map(log_lr, params),
                             prev=jax.tree.map(
                                 lambda p: tree_utils.zeros_state(p, jnp.float32), params))

    def update_fn(updates, state, params=None, **extra_args):
      tree_utils.require_params(self.name, params)
      tree_utils.check_trees(self.name, updates, ("optimizer state", state.log_lr),
                             ("params", params))
      loss = extra_args.get("loss", extra_args.get("value"))
      loss_feats, emas, n_loss, initial = feats_lib.loss_features(
          loss, state.loss_emas, state.loss_count, state.initial_loss, self.loss_decays)
      shared = self.shared_features(state.count, num_steps, loss_feats)

      def leaf(u, p, log_lr, prev):
        if not (tree_utils.is_float(u) and tree_utils.is_float(p)):
          return tree_utils.Leaf(u, log_lr, prev)
        if u.shape != p.shape or prev.shape != p.shape or jnp.shape(log_lr) != ():
          raise ValueError(f"{self.name}: update of shape {u.shape} and state of shapes "
                           f"{[jnp.shape(log_lr), prev.shape]} for a parameter of shape "
                           f"{p.shape}")
        clean = feats_lib.finite_or_zero(u.astype(jnp.promote_types(u.dtype, jnp.float32)))
        feats = self.tensor_features(clean, p, prev, log_lr)
        new = jnp.clip(log_lr.astype(dtype) + self.log_lr_change(meta_params, feats, shared),
                       -self.log_clip, self.log_clip)
        # e^0 = 1 exactly: a fresh controller returns u bit for bit; a nan stays in its entry.
        step = (u.astype(jnp.promote_types(u.dtype, dtype)) * jnp.exp(new)).astype(u.dtype)
        return tree_utils.Leaf(step, new.astype(log_lr.dtype), clean.astype(prev.dtype))

      outs = jax.tree.map(leaf, updates, params, state.log_lr, state.prev)
      new_updates, log_lr, prev = tree_utils.unzip(outs, 3)
      new_state = ControllerState(count=optax.safe_increment(state.count), loss_emas=emas,
                                  loss_count=n_loss, initial_loss=initial, log_lr=log_lr,
                                  prev=prev)
      return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
