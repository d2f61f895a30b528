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
momenta ``M_k``, ``G / sqrt(V̂_j)`` per factored decay and ``M_mid / sqrt(V̂_slow)``, with
``1 / sqrt(V̂)`` computed as Adafactor does, from the row and column factors (each floored at
``ε₁``). Time features ``tanh(t / τ - 1)`` are shared by the whole step. The feature maths
(EMAs, normalisers with their ``ε``, time features, non-finite masking) are the kernels of
:mod:`learned_opt.features` that :class:`~learned_opt.MLPOptimizer` uses too. A one-hidden-layer
MLP maps them to a direction ``d`` and a magnitude ``m`` and the step is ``d · exp(a m) · b``
(Metz et al. 2022, arXiv 2203.11860, ``AdafacMLPLOpt``; output of Eq. (1) of arXiv 2009.11243).

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
from learned_opt import tree_utils

_EPS_G2 = 1e-30  # Adafactor's ε₁, added to G² before averaging


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


def _acc_dtype(dtype) -> jnp.dtype:
  """Accumulators are at least float32 (float64 params keep float64 ones)."""
  return jnp.promote_types(dtype, jnp.float32)


def _logit(p: float) -> float:
  p = min(max(float(p), 1e-6), 1 - 1e-6)
  return math.log(p) - math.log1p(-p)


def _factored_init(p, n: int):
  """Row/column accumulators for one leaf, ``n`` factored decays."""
  if not tree_utils.is_float(p):
    none = tuple(tree_utils.placeholder() for _ in range(n))
    return none, none
  dt = _acc_dtype(p.dtype)
  if p.ndim >= 2:
    rows = tuple(jnp.zeros(p.shape[:-1], dt) for _ in range(n))
    cols = tuple(jnp.zeros(p.shape[:-2] + p.shape[-1:], dt) for _ in range(n))
  else:
    rows = tuple(jnp.zeros(p.shape, dt) for _ in range(n))
    cols = tuple(tree_utils.placeholder() for _ in range(n))
  return rows, cols


def _factored_update(g2, row, col, beta, one_minus_beta):
  """One Adafactor accumulator step; returns ``(row, col, 1/sqrt(V̂))`` (arXiv 1804.04235, Alg. 4).

  For rank >= 2 the reciprocal square root is returned factored, as the product of a row
  vector and a column vector (``V̂ = R Cᵀ / mean(R)`` is rank one): two small ``rsqrt`` instead
  of one per parameter. Both factors are floored at ``ε₁`` so that an accumulator that
  underflows cannot give an infinite feature.
  """
  if g2.ndim >= 2:
    row = feats_lib.ema(jnp.mean(g2, axis=-1), row, beta, one_minus_beta)
    col = feats_lib.ema(jnp.mean(g2, axis=-2), col, beta, one_minus_beta)
    denom = jnp.maximum(jnp.mean(row, axis=-1, keepdims=True), _EPS_G2)
    row_factor = jax.lax.rsqrt(jnp.maximum(row / denom, _EPS_G2))
    col_factor = jax.lax.rsqrt(jnp.maximum(col, _EPS_G2))
    rsqrt_v = row_factor[..., :, None] * col_factor[..., None, :]
  else:
    row = feats_lib.ema(g2, row, beta, one_minus_beta)
    rsqrt_v = jax.lax.rsqrt(jnp.maximum(row, _EPS_G2))
  return row, col, rsqrt_v


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
  leaves pass through unchanged; updates keep the dtype of their gradient. The feature maths
  (EMAs, the per-tensor normalisers, the time features and the handling of non-finite
  entries) are :mod:`learned_opt.features`' kernels, shared with
  :class:`~learned_opt.MLPOptimizer`: a non-finite gradient entry gives a ``nan`` update at that
  entry only (it counts as zero in the normalisers and in Adafactor's row and column
  statistics), and the time features use the number of updates already applied, ``t``.

  Attributes:
    hidden_size: width H of the hidden layer.
    momentum_decays: initial decays of the K momenta (K >= 1).
    factored_decays: initial decays of the J factored second moments (J >= 1).
    time_scales: the τ of the time features ``tanh(t/τ - 1)``.
    exp_mult: a, the magnitude multiplier.
    step_mult: b, the output scale.
    norm_eps: ``ε`` of the per-tensor feature normalisation (:func:`features.inverse_rms`).
    horizon_aware: meta-trained with each run's length as ``num_steps`` (read by
      :func:`learned_opt.pretrained`; this architecture has no horizon features, so it does
      not change the updates).

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
  norm_eps: float = feats_lib.NORM_EPS
  horizon_aware: bool = False

  def __post_init__(self):
    if not isinstance(self.horizon_aware, bool):
      raise ValueError(f"horizon_aware must be a bool, got {self.horizon_aware!r}")
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
    a, b = self.exp_mult, self.step_mult

    def init_fn(params):
      mu = tuple(jax.tree.map(lambda p: tree_utils.zeros_state(p, _acc_dtype), params)
                 for _ in range(n_mom))
      fac = jax.tree.map(lambda p: tree_utils.Leaf(*sum(_factored_init(p, n_fac), ())), params)
      fac = tree_utils.unzip(fac, 2 * n_fac)
      row, col = fac[:n_fac], fac[n_fac:]
      return AdafactorMLPState(count=jnp.zeros([], jnp.int32), mu=mu, row=row, col=col)

    def update_fn(updates, state, params=None, **extra_args):
      del extra_args  # `loss=` and unknown keywords are accepted and ignored
      tree_utils.require_params(self.name, params)
      tree_utils.check_trees(self.name, updates, ("params", params),
                             ("optimizer state", state.mu[0]))
      # 1 - sigmoid(x) is computed as sigmoid(-x): exact even when a decay rounds to 1.
      betas = jax.nn.sigmoid(meta_params["momentum_logits"])
      one_m_betas = jax.nn.sigmoid(-meta_params["momentum_logits"])
      fbetas = jax.nn.sigmoid(meta_params["factored_logits"])
      one_m_fbetas = jax.nn.sigmoid(-meta_params["factored_logits"])
      time_feats = feats_lib.tanh_time_features(state.count, self.time_scales).astype(w1.dtype)
      # Time features are shared by all parameters: fold them into the first-layer bias.
      hidden_bias = b1 + time_feats @ w1[n_feat:]

      def leaf(g, p, *acc):
        mus, rows, cols = acc[:n_mom], acc[n_mom:n_mom + n_fac], acc[n_mom + n_fac:]
        if not tree_utils.is_float(p):
          return tree_utils.Leaf(g, *acc)
        if g.shape != p.shape:
          raise ValueError(f"{self.name}: update of shape {g.shape} for a parameter of shape "
                           f"{p.shape}")
        dt = _acc_dtype(p.dtype)
        g32, p32 = g.astype(dt), p.astype(dt)
        new_mus = tuple(feats_lib.ema(g32, mus[k], betas[k], one_m_betas[k])
                        for k in range(n_mom))
        # Non-finite entries of G² count as zero in the row and column statistics, so a bad
        # gradient entry does not spread along its row and column.
        g2 = feats_lib.finite_or_zero(jnp.square(g32)) + _EPS_G2
        new_rows, new_cols, rsqrts = [], [], []
        for j in range(n_fac):
          r, c, rsqrt_v = _factored_update(g2, rows[j], cols[j], fbetas[j], one_m_fbetas[j])
          new_rows.append(r)
          new_cols.append(c)
          rsqrts.append(rsqrt_v)
        feats = [p32, g32, *new_mus, *(g32 * r for r in rsqrts),
                 new_mus[min(1, n_mom - 1)] * rsqrts[-1]]
        # The RMS normalisers (one scalar per feature and tensor, non-finite entries counting
        # as zero) are folded into the first-layer weights. The first layer is a sum over
        # features of (H, *shape) broadcasts and the second an unrolled sum over the H hidden
        # units: elementwise chains that XLA fuses into a few loops, with a graph small enough
        # to compile and differentiate fast.
        norm = jnp.stack([feats_lib.inverse_rms(f, self.norm_eps) for f in feats])  # (F,)
        # One mask both zeroes the network's inputs at entries with a non-finite feature and
        # marks their updates: masking each feature on its own and testing each again at the
        # output made XLA materialise every feature (~2.5x slower steps).
        finite = feats_lib.finite_entries(feats)
        expand = (1,) * p.ndim
        w_eff = (norm[:, None] * w1[:n_feat].astype(dt)).reshape((n_feat, n_hidden) + expand)
        pre = hidden_bias.astype(dt).reshape((n_hidden,) + expand)
        for i, f in enumerate(feats):
          pre = pre + w_eff[i] * jnp.where(finite, f, 0.0)[None]
        hid = jax.nn.relu(pre)  # (H, *shape)
        w2d = w2.astype(dt)
        direction = b2[0].astype(dt) + sum(w2d[j, 0] * hid[j] for j in range(n_hidden))
        magnitude = b2[1].astype(dt) + sum(w2d[j, 1] * hid[j] for j in range(n_hidden))
        step = feats_lib.nan_unless_finite(direction * jnp.exp(a * magnitude) * b, finite)
        return tree_utils.Leaf(step.astype(g.dtype), *new_mus, *new_rows, *new_cols)

      outs = jax.tree.map(leaf, updates, params, *state.mu, *state.row, *state.col)
      outs = tree_utils.unzip(outs, 1 + n_mom + 2 * n_fac)
      new_updates, mu = outs[0], outs[1:1 + n_mom]
      row, col = outs[1 + n_mom:1 + n_mom + n_fac], outs[1 + n_mom + n_fac:]
      new_state = AdafactorMLPState(count=optax.safe_increment(state.count), mu=mu, row=row,
                                    col=col)
      return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def state_floats_per_leaf(state: AdafactorMLPState) -> Any:
  """Number of state floats held per parameter tensor (for memory checks)."""
  trees = (*state.mu, *state.row, *state.col)
  return jax.tree.map(lambda *xs: sum(x.size for x in xs), *trees)
