"""A per-parameter MLP learned optimizer fed with Adafactor-style factored second moments.

For every tensor ``G`` (the gradient of a parameter ``P`` of shape ``(..., r, c)``) the state holds
``K`` momenta (one float per parameter each) and, per factored decay ``β``, Adafactor's row and
column statistics of ``G²`` (Shazeer & Stern 2018, arXiv 1804.04235, Algorithm 4):

.. math::
  R_t = β R_{t-1} + (1-β)\\,\\mathrm{mean}_{cols}(G_t^2 + ε_1),\\qquad
  C_t = β C_{t-1} + (1-β)\\,\\mathrm{mean}_{rows}(G_t^2 + ε_1),\\qquad
  \\hat V_t = R_t C_t^\\top / \\mathrm{mean}(R_t)

Tensors of rank < 2 keep the full (diagonal) accumulator instead. With the defaults (3 momenta,
2 factored decays) the state is 3 floats per parameter plus ``O(rows + cols)`` for matrices and
5 floats per parameter for vectors and scalars.

Features per parameter (each divided by its root-mean-square over the tensor): ``P``, ``G``, the
momenta ``M_k``, ``G / sqrt(V̂_j)`` per factored decay and ``M_mid / sqrt(V̂_slow)``. Time
features ``tanh(t / τ - 1)`` are shared by the whole step. A one-hidden-layer MLP maps them to a
direction ``d`` and a magnitude ``m`` and the step is ``d · exp(a m) · b`` (Metz et al. 2022,
arXiv 2203.11860, ``AdafacMLPLOpt``; output of Eq. (1) of arXiv 2009.11243).

The per-parameter network is written as broadcast multiplies reduced over a small leading axis
(per-tensor weights folded with the feature normalisers), which XLA fuses with the feature maths
while keeping the graph small (fast to compile and to differentiate through unrolls).
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
from learned_opt.tree_utils import Leaf as _Leaf
from learned_opt.tree_utils import is_float as _is_float
from learned_opt.tree_utils import placeholder as _placeholder
from learned_opt.tree_utils import unzip as _unzip

_EPS_G2 = 1e-30  # Adafactor's ε₁, added to G² before averaging
_EPS_RSQRT = 1e-30  # floor under V̂ before the reciprocal square root
_EPS_NORM = 1e-12  # floor under a feature's mean square over the tensor


class AdafactorMLPState(NamedTuple):
  """State of :class:`AdafactorMLPOptimizer`.

  Attributes:
    count: number of updates so far (int32 scalar).
    mu: one tree per momentum decay, each shaped like the params.
    row: one tree per factored decay: row statistics ``(..., r)`` for rank >= 2 leaves, the full
      diagonal accumulator for rank < 2 leaves.
    col: one tree per factored decay: column statistics ``(..., c)`` for rank >= 2 leaves, an
      empty ``(0,)`` placeholder for rank < 2 leaves.
  """

  count: jax.Array
  mu: tuple[optax.Updates, ...]
  row: tuple[optax.Updates, ...]
  col: tuple[optax.Updates, ...]


def _acc_dtype(p) -> jnp.dtype:
  return jnp.promote_types(p.dtype, jnp.float32)


def _logit(p: float) -> float:
  p = min(max(float(p), 1e-6), 1 - 1e-6)
  return math.log(p) - math.log1p(-p)


def _rms_scale(x: jax.Array) -> jax.Array:
  """``1 / sqrt(mean(x²) + ε)`` over the whole tensor (a scalar)."""
  return jax.lax.rsqrt(jnp.mean(jnp.square(x)) + _EPS_NORM)


def _factored_init(p, n: int):
  """Row/column accumulators for one leaf, ``n`` factored decays."""
  if not _is_float(p):
    return tuple(_placeholder() for _ in range(n)), tuple(_placeholder() for _ in range(n))
  dt = _acc_dtype(p)
  if p.ndim >= 2:
    rows = tuple(jnp.zeros(p.shape[:-1], dt) for _ in range(n))
    cols = tuple(jnp.zeros(p.shape[:-2] + p.shape[-1:], dt) for _ in range(n))
  else:
    rows = tuple(jnp.zeros(p.shape, dt) for _ in range(n))
    cols = tuple(_placeholder() for _ in range(n))
  return rows, cols


def _factored_update(g2, row, col, beta, one_minus_beta):
  """One Adafactor accumulator step; returns ``(row, col, V̂)`` (arXiv 1804.04235, Alg. 4)."""
  if g2.ndim >= 2:
    row = beta * row + one_minus_beta * jnp.mean(g2, axis=-1)
    col = beta * col + one_minus_beta * jnp.mean(g2, axis=-2)
    denom = jnp.maximum(jnp.mean(row, axis=-1, keepdims=True), _EPS_G2)
    v = (row / denom)[..., :, None] * col[..., None, :]
  else:
    row = beta * row + one_minus_beta * g2
    v = row
  return row, col, v


@base.register
@dataclasses.dataclass(frozen=True)
class AdafactorMLPOptimizer(base.LearnedOptimizer):
  """Per-parameter MLP learned optimizer with Adafactor-style factored second-moment features.

  .. math::
    h = \\mathrm{relu}(W_1 [\\tilde f; \\tanh(t/τ - 1)] + b_1),\\quad
    (d, m) = W_2 h + b_2,\\quad u = d \\cdot \\exp(a\\, m) \\cdot b

  where ``f̃`` are the per-parameter features divided by their RMS over the tensor (see the module
  docstring). Meta-parameters::

    {"mlp": {"w1": (F + T, H), "b1": (H,), "w2": (H, 2), "b2": (2,)},
     "momentum_logits": (K,), "factored_logits": (J,)}

  The decays are ``sigmoid`` of the logits, so meta-training can learn them. Integer and boolean
  leaves pass through unchanged; updates keep the dtype of their parameter.

  Attributes:
    hidden_size: width H of the hidden layer.
    momentum_decays: initial decays of the K momenta (K >= 1).
    factored_decays: initial decays of the J factored second moments (J >= 1).
    time_scales: the τ of the time features ``tanh(t/τ - 1)``.
    exp_mult: a, the magnitude multiplier.
    step_mult: b, the output scale.

  References:
    Metz et al., *Practical tradeoffs between memory, compute, and performance in learned
    optimizers*, 2022, arXiv 2203.11860. Shazeer & Stern, *Adafactor*, 2018, arXiv 1804.04235.
  """

  name = "adafactor_mlp"
  hidden_size: int = 4
  momentum_decays: tuple[float, ...] = (0.5, 0.9, 0.99)
  factored_decays: tuple[float, ...] = (0.99, 0.999)
  time_scales: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0,
                                    10000.0, 30000.0)
  exp_mult: float = 1e-3
  step_mult: float = 1e-3

  def __post_init__(self):
    if not isinstance(self.hidden_size, int) or self.hidden_size < 1:
      raise ValueError(f"hidden_size must be a positive int, got {self.hidden_size!r}")
    for field in ("momentum_decays", "factored_decays"):
      decays = tuple(getattr(self, field))
      if not decays or not all(0.0 < d < 1.0 for d in decays):
        raise ValueError(f"{field} must be a non-empty sequence in (0, 1), got {decays!r}")
      object.__setattr__(self, field, decays)
    object.__setattr__(self, "time_scales", feats_lib.check_time_scales(self.time_scales))

  @property
  def num_features(self) -> int:
    """Per-parameter features F: P, G, K momenta, J rsqrt-scaled G, and one Adam-like M/sqrt(V)."""
    return 2 + len(self.momentum_decays) + len(self.factored_decays) + 1

  def init(self, key: jax.Array) -> base.MetaParams:
    k1, k2 = jax.random.split(key)
    n_in = self.num_features + len(self.time_scales)
    h = self.hidden_size
    return {
        "mlp": {
            "w1": jax.random.normal(k1, (n_in, h), jnp.float32) / math.sqrt(n_in),
            "b1": jnp.zeros((h,), jnp.float32),
            "w2": jax.random.normal(k2, (h, 2), jnp.float32) / math.sqrt(h),
            "b2": jnp.zeros((2,), jnp.float32),
        },
        "momentum_logits": jnp.asarray([_logit(d) for d in self.momentum_decays], jnp.float32),
        "factored_logits": jnp.asarray([_logit(d) for d in self.factored_decays], jnp.float32),
    }

  def scale_by(self, meta_params, *, num_steps=None):
    del num_steps  # no horizon feature in this architecture
    mlp = meta_params["mlp"]
    w1, b1, w2, b2 = mlp["w1"], mlp["b1"], mlp["w2"], mlp["b2"]
    n_feat, n_hidden = self.num_features, self.hidden_size
    expected = (n_feat + len(self.time_scales), n_hidden)
    if tuple(w1.shape) != expected:
      raise ValueError(f"{self.name}: meta_params['mlp']['w1'] has shape {tuple(w1.shape)}, "
                       f"expected {expected} for this config")
    n_mom, n_fac = len(self.momentum_decays), len(self.factored_decays)
    taus = jnp.asarray(self.time_scales, jnp.float32)
    a, b = self.exp_mult, self.step_mult

    def init_fn(params):
      def mom(p):
        return jnp.zeros(p.shape, _acc_dtype(p)) if _is_float(p) else _placeholder()

      mu = tuple(jax.tree.map(mom, params) for _ in range(n_mom))
      fac = jax.tree.map(lambda p: _Leaf(*sum(_factored_init(p, n_fac), ())), params)
      fac = _unzip(fac, 2 * n_fac)
      row, col = fac[:n_fac], fac[n_fac:]
      return AdafactorMLPState(count=jnp.zeros([], jnp.int32), mu=mu, row=row, col=col)

    def update_fn(updates, state, params=None, **extra_args):
      del extra_args  # `loss=` and unknown keywords are accepted and ignored
      if params is None:
        raise ValueError(f"{self.name}: update() needs `params` (parameter values are "
                         "features); call tx.update(grads, state, params).")
      treedef = jax.tree.structure(updates)
      for what, tree in (("params", params), ("optimizer state", state.mu[0])):
        if jax.tree.structure(tree) != treedef:
          raise ValueError(f"{self.name}: the updates tree does not match the {what} tree:\n"
                           f"  updates: {treedef}\n  {what}: {jax.tree.structure(tree)}")
      count = optax.safe_increment(state.count)
      # 1 - sigmoid(x) is computed as sigmoid(-x): exact even when a decay rounds to 1.
      betas = jax.nn.sigmoid(meta_params["momentum_logits"])
      one_m_betas = jax.nn.sigmoid(-meta_params["momentum_logits"])
      fbetas = jax.nn.sigmoid(meta_params["factored_logits"])
      one_m_fbetas = jax.nn.sigmoid(-meta_params["factored_logits"])
      t = count.astype(taus.dtype)
      time_feats = jnp.tanh(t / taus - 1.0).astype(w1.dtype)
      # Time features are shared by all parameters: fold them into the first-layer bias.
      hidden_bias = b1 + time_feats @ w1[n_feat:]

      def leaf(g, p, *acc):
        mus, rows, cols = acc[:n_mom], acc[n_mom:n_mom + n_fac], acc[n_mom + n_fac:]
        if not _is_float(p):
          return _Leaf(g, *acc)
        if g.shape != p.shape:
          raise ValueError(f"{self.name}: update of shape {g.shape} for a parameter of shape "
                           f"{p.shape}")
        dt = _acc_dtype(p)
        g32, p32 = g.astype(dt), p.astype(dt)
        new_mus = tuple((betas[k] * mus[k] + one_m_betas[k] * g32).astype(dt)
                        for k in range(n_mom))
        g2 = jnp.square(g32) + _EPS_G2
        new_rows, new_cols, rsqrts = [], [], []
        for j in range(n_fac):
          r, c, v = _factored_update(g2, rows[j], cols[j], fbetas[j], one_m_fbetas[j])
          new_rows.append(r.astype(dt))
          new_cols.append(c.astype(cols[j].dtype))
          rsqrts.append(jax.lax.rsqrt(v + _EPS_RSQRT))
        feats = [p32, g32, *new_mus, *(g32 * r for r in rsqrts),
                 new_mus[min(1, n_mom - 1)] * rsqrts[-1]]
        # The RMS normalisers (one scalar per feature and tensor) are folded into the
        # first-layer weights. The first layer is a sum over features of (H, *shape) broadcasts
        # and the second an unrolled sum over the H hidden units: elementwise chains that XLA
        # fuses into a few loops, with a graph small enough to compile and differentiate fast.
        norm = jnp.stack([_rms_scale(f) for f in feats])  # (F,)
        expand = (1,) * p.ndim
        w_eff = (norm[:, None] * w1[:n_feat].astype(dt)).reshape((n_feat, n_hidden) + expand)
        pre = hidden_bias.astype(dt).reshape((n_hidden,) + expand)
        for i, f in enumerate(feats):
          pre = pre + w_eff[i] * f[None]
        hid = jax.nn.relu(pre)  # (H, *shape)
        w2d = w2.astype(dt)
        direction = b2[0].astype(dt) + sum(w2d[j, 0] * hid[j] for j in range(n_hidden))
        magnitude = b2[1].astype(dt) + sum(w2d[j, 1] * hid[j] for j in range(n_hidden))
        step = direction * jnp.exp(a * magnitude) * b
        return _Leaf(step.astype(p.dtype), *new_mus, *new_rows, *new_cols)

      outs = jax.tree.map(leaf, updates, params, *state.mu, *state.row, *state.col)
      outs = _unzip(outs, 1 + n_mom + 2 * n_fac)
      new_updates, mu = outs[0], outs[1:1 + n_mom]
      row, col = outs[1 + n_mom:1 + n_mom + n_fac], outs[1 + n_mom + n_fac:]
      return new_updates, AdafactorMLPState(count=count, mu=mu, row=row, col=col)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def state_floats_per_leaf(state: AdafactorMLPState) -> Any:
  """Number of state floats held per parameter tensor (for memory checks)."""
  trees = (*state.mu, *state.row, *state.col)
  return jax.tree.map(lambda *xs: sum(x.size for x in xs), *trees)
