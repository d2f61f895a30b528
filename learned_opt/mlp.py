"""The per-parameter MLP learned optimizer (``small_fc`` / ``mlp_lopt`` of Metz et al.).

Every element of every parameter tensor is updated by the same small ReLU network. Its inputs
are, per parameter, the gradient ``g``, the parameter ``p``, momenta ``m_k`` and second moments
``v_r`` at several decays, ``1/sqrt(v_r)`` and the Adam-like ratios ``m_k / sqrt(v_r)``; each
is divided by its root-mean-square over the tensor (:mod:`learned_opt.features`). Features
shared by the whole step, ``tanh(t/τ - 1)`` for log-spaced ``τ`` and, when the run length
``T = num_steps`` is known, ``(t/T, log10(T)/5)``, are appended un-normalised. The network
outputs a direction ``d`` and a magnitude ``μ`` and the step is (arXiv 2009.11243, Eq. 1)

.. math::
  u = d \\cdot \\exp(a\\, μ) \\cdot b

with small ``a = exp_mult`` and ``b = step_mult`` (1e-3), so a freshly initialised optimizer
takes tiny, stable steps. This module is the update rule only: a learned schedule
(:mod:`learned_opt.schedule`) composes with it through :func:`learned_opt.chain`, and starts
other than :meth:`MLPOptimizer.init`'s are functions of :mod:`learned_opt.inits`::

  lopt = learned_opt.chain(learned_opt.MLPOptimizer(), learned_opt.LearnedSchedule())
  theta = learned_opt.inits.adam_like(lopt, jax.random.key(0), learning_rate=3e-3)
  learned_opt.save("opt.safetensors", lopt, theta)
  lopt, theta = learned_opt.load("opt.safetensors")
  tx = optax.chain(optax.clip_by_global_norm(1.0), lopt.transform(theta, num_steps=1000))

Implementation notes (speed):

* The per-tensor feature normalisers and the shared step features are folded into the first
  layer (``W₀ diag(s)`` and ``b₀ + W₀ᵀ φ(t)``), so normalised features are never built.
* Tensors with at least :data:`FUSE_MIN_SIZE` elements run the network as one fused
  elementwise loop, smaller ones as matmuls (:mod:`learned_opt.networks`); both compute the
  same function up to float rounding order.
* The ``F`` normalisers come from one variadic reduction (:func:`features.tensor_means`) fused
  with the state update, so no feature tensor is materialised for them either.

References:
  Metz et al., *Tasks, stability, architecture, and compute: training more effective learned
  optimizers, and using them to train themselves*, 2020, arXiv 2009.11243.
  Metz et al., *Practical tradeoffs between memory, compute, and performance in learned
  optimizers*, 2022, arXiv 2203.11860.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_opt import base
from learned_opt import features as feats_lib
from learned_opt import networks
from learned_opt import tree_utils

# Tensors with at least this many elements run the fused elementwise network (fast, compiles in
# seconds); smaller ones the matmul form (compiles at once). A speed knob, not part of the
# optimizer: any value gives the same function up to float rounding order. Read at each
# ``scale_by`` call, so tests may change it.
FUSE_MIN_SIZE = 16384
# Folded into init's key for the per-tensor features' weights.
_TENSOR_KEY = 0x7E450


@dataclasses.dataclass(frozen=True)
class TensorFeatures:
  """Per-tensor scale features of :class:`MLPOptimizer` (``MLPOptimizer(tensor=...)``).

  The log-RMS over each tensor of the parameter, the Adam-like ratios ``m_k v_r^{-1/2}`` and
  optionally the gradient (:func:`learned_opt.features.tensor_log_rms`), one number per tensor
  and feature, read by the first layer through their own weights ``"wt": (Z, H₀)``. The
  per-parameter features are scale-free; these tell the network how large a tensor's
  parameters and gradients are. Measured in docs/findings.md: no gain on the shipped recipe.

  Attributes:
    grad: include the gradient's log-RMS, the only one that follows the loss's scale from step
      to step (a gradient spike moves it at once).
    held: compute them at the run's first update only and hold them for the run (in
      :attr:`MLPState.tensor_z`), so the rule's per-tensor input is constant in time.
  """

  grad: bool = True
  held: bool = False

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "TensorFeatures":
    """From the dict :func:`dataclasses.asdict` gives; unknown keys raise ``ValueError``."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(config) - set(known))
    if unknown:
      raise ValueError(f"tensor: unknown keys {unknown}; known: {known}")
    if not all(isinstance(v, bool) for v in config.values()):
      raise ValueError(f"tensor: values must be bools, got {dict(config)!r}")
    return cls(**config)


class MLPState(NamedTuple):
  """State of :class:`MLPOptimizer`.

  Attributes:
    count: number of updates applied so far (int32 scalar); the step ``t`` of the time features.
    mom: one tree per momentum decay, each shaped like the params (float32).
    rms: one tree per second-moment decay, each shaped like the params (float32).
    tensor_z: with ``tensor=TensorFeatures(held=True)``, the per-tensor features of the first
      update, one ``(Z,)`` vector per parameter tensor (held for the run); ``()`` otherwise.

  Integer and boolean leaves hold an empty ``(0,)`` float32 placeholder instead.
  """

  count: jax.Array
  mom: tuple[optax.Updates, ...]
  rms: tuple[optax.Updates, ...]
  tensor_z: optax.Updates | tuple = ()


@base.register
@dataclasses.dataclass(frozen=True)
class MLPOptimizer(base.LearnedOptimizer):
  """Per-parameter MLP learned optimizer with momentum and second-moment features.

  .. math::
    x &= \\big[g,\\ p,\\ m_k,\\ v_r,\\ v_r^{-1/2},\\ m_k v_r^{-1/2}\\big],
    \\quad m_k \\leftarrow β_k m_k + (1-β_k) g,\\quad v_r \\leftarrow β_r v_r + (1-β_r) g^2 \\\\
    \\tilde x_f &= x_f / \\sqrt{\\mathrm{mean}_{\\text{tensor}}(x_f^2) + ε},\\qquad
    (d, μ) = \\mathrm{MLP}\\big([\\tilde x;\\ \\tanh(t/τ - 1);\\ ψ(t, T)]\\big) \\\\
    u &= d \\cdot \\exp(a\\, μ) \\cdot b

  Meta-parameters: ``{"w0": (F + S, H₀), "b0": (H₀,), "w1": (H₀, H₁), "b1": (H₁,), ...,
  "wL": (H_{L-1}, 2), "bL": (2,)}`` with ``F`` = :attr:`num_features` per-parameter features
  and ``S`` = :attr:`num_shared_features` step features. :meth:`init` draws LeCun-normal
  weights and zero biases; :func:`learned_opt.inits.adam_like` starts from a normalised Adam.

  With per-tensor features (:attr:`tensor`) the first layer also reads, per tensor,
  ``z = log10 RMS`` of the gradient, the parameter and the ratios ``m_k v_r^{-1/2}``
  (:func:`learned_opt.features.tensor_log_rms`) through ``"wt": (Z, H₀)``: its first-layer
  bias becomes ``b₀ + W₀ᵀ[φ(t); ψ(t, T)] + W_tᵀ z``.

  The update's sign is learned (``u`` is added to the params). Updates have their gradient's
  dtype (their parameter's, or float32 inside a chain, which rounds once at its end); the state
  is float32 whatever the parameter dtype. Integer and boolean leaves (and
  ``None`` / ``optax.masked`` leaves) pass through unchanged and hold no state. A non-finite
  gradient or state entry gives a ``nan`` update at that entry only: non-finite features count
  as zero in the per-tensor normalisers and other tensors are computed independently.

  Attributes:
    hidden_sizes: widths of the hidden ReLU layers (the benchmarked default is ``(32, 32)``).
    momentum_decays: decays ``β_k`` of the momenta (one state float per parameter each).
    rms_decays: decays ``β_r`` of the second moments (one state float per parameter each).
    time_scales: the ``τ`` of the step features ``tanh(t/τ - 1)``, log-spaced.
    exp_mult: ``a``, multiplier of the magnitude output.
    step_mult: ``b``, scale of the step.
    norm_eps: ``ε`` of the per-tensor feature normalisation.
    rsqrt_eps: ``ε`` in ``1/sqrt(v + ε)``.
    tensor: per-tensor scale features (:class:`TensorFeatures`, or a dict of its fields), or
      ``None`` (the default) for none.
    horizon_aware: meta-trained seeing each run's length as ``num_steps``, so it should be
      given ``num_steps`` at use (:func:`learned_opt.pretrained` reads it). It does not change
      :meth:`scale_by`, which uses ``num_steps`` whenever it is given.

  The defaults (4 momenta, 1 second moment: 12 features, 20 bytes of state per parameter) are
  a lighter feature set than ``mlp_lopt``'s 5 + 1 (14 features) to keep the step cheap; the
  hidden sizes are the benchmark's.

  Example::

    lopt = learned_opt.MLPOptimizer()
    theta = lopt.init(jax.random.key(0))
    tx = lopt.transform(theta)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)

  References:
    Metz et al., 2020, arXiv 2009.11243 (Eq. 1, the ``d · exp(a μ) · b`` output).
    Metz et al., 2022, arXiv 2203.11860 (Sec. 3, per-parameter MLP learned optimizers).
  """

  name = "mlp"
  hidden_sizes: tuple[int, ...] = (32, 32)
  momentum_decays: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
  rms_decays: tuple[float, ...] = (0.95,)
  time_scales: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0,
                                    10000.0, 30000.0, 100000.0)
  exp_mult: float = 1e-3
  step_mult: float = 1e-3
  norm_eps: float = feats_lib.NORM_EPS
  rsqrt_eps: float = feats_lib.RSQRT_EPS
  tensor: TensorFeatures | None = None
  horizon_aware: bool = False

  def __post_init__(self):
    sizes = tuple(self.hidden_sizes)
    if not all(isinstance(h, int) and h >= 1 for h in sizes):
      raise ValueError(f"hidden_sizes must be positive ints, got {self.hidden_sizes!r}")
    object.__setattr__(self, "hidden_sizes", sizes)
    for field in ("momentum_decays", "rms_decays"):
      decays = tuple(float(d) for d in getattr(self, field))
      if not all(0.0 <= d < 1.0 for d in decays):
        raise ValueError(f"{field} must lie in [0, 1), got {decays!r}")
      object.__setattr__(self, field, decays)
    object.__setattr__(self, "time_scales", feats_lib.check_time_scales(self.time_scales))
    if isinstance(self.tensor, Mapping):
      object.__setattr__(self, "tensor", TensorFeatures.from_config(self.tensor))
    if self.tensor is not None and not isinstance(self.tensor, TensorFeatures):
      raise ValueError(f"tensor must be a TensorFeatures, a dict of its fields or None, "
                       f"got {self.tensor!r}")
    if not isinstance(self.horizon_aware, bool):
      raise ValueError(f"horizon_aware must be a bool, got {self.horizon_aware!r}")

  # -- static shapes ------------------------------------------------------------------------

  def feature_names(self) -> list[str]:
    """Names of the per-parameter features, in the order of ``w0``'s first rows."""
    moms = [f"mom_{b}" for b in self.momentum_decays]
    rmss = [f"rms_{b}" for b in self.rms_decays]
    return (["grad", "param"] + moms + rmss + [f"rsqrt_{r}" for r in rmss]
            + [f"{m}*rsqrt_{r}" for r in rmss for m in moms])

  @property
  def num_features(self) -> int:
    """``F``: per-parameter features, ``2 + K + 2R + K·R``."""
    k, r = len(self.momentum_decays), len(self.rms_decays)
    return 2 + k + 2 * r + k * r

  def tensor_feature_names(self) -> list[str]:
    """Names of the per-tensor features (rows of ``"wt"``); empty without them."""
    if self.tensor is None:
      return []
    names = self.feature_names()
    return [f"log_rms_{names[i]}" for i in self._tensor_feature_index()]

  def _tensor_feature_index(self) -> list[int]:
    """Which per-parameter features' RMS the per-tensor features read."""
    k, r = len(self.momentum_decays), len(self.rms_decays)
    f = self.num_features
    grad = [0] if self.tensor.grad else []
    return [*grad, 1, *range(f - k * r, f)]  # grad, param, then every m_k / sqrt(v_r)

  @property
  def num_shared_features(self) -> int:
    """``S``: step features shared by all parameters (time, then horizon)."""
    return len(self.time_scales) + feats_lib.NUM_HORIZON_FEATURES

  def _layer_shapes(self) -> list[tuple[int, int]]:
    sizes = [self.num_features + self.num_shared_features, *self.hidden_sizes, 2]
    return list(zip(sizes[:-1], sizes[1:]))

  def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
    expected = {}
    for i, (fan_in, fan_out) in enumerate(self._layer_shapes()):
      expected[f"w{i}"], expected[f"b{i}"] = (fan_in, fan_out), (fan_out,)
    if self.tensor is not None:
      expected["wt"] = (len(self._tensor_feature_index()), self._layer_shapes()[0][1])
    return expected

  # -- meta-parameters ----------------------------------------------------------------------

  def init(self, key: jax.Array) -> base.MetaParams:
    """LeCun-normal weights ``N(0, 1/fan_in)`` and zero biases for every layer.

    A random network taking tiny steps, not a descent method; for an Adam-like start see
    :func:`learned_opt.inits.adam_like`. The per-tensor features' ``"wt"`` (with
    :attr:`tensor`) is drawn from its own key (``fold_in(key, ·)``), so the other draws do not
    depend on it.
    """
    shapes = self._layer_shapes()
    keys = jax.random.split(key, len(shapes))
    theta = {}
    for i, ((fan_in, fan_out), k) in enumerate(zip(shapes, keys)):
      theta[f"w{i}"] = jax.random.normal(k, (fan_in, fan_out), jnp.float32) / math.sqrt(fan_in)
      theta[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
    if self.tensor is not None:
      n_z, (fan_in, width) = len(self._tensor_feature_index()), shapes[0]
      k = jax.random.fold_in(key, _TENSOR_KEY)
      theta["wt"] = jax.random.normal(k, (n_z, width), jnp.float32) / math.sqrt(fan_in + n_z)
    return theta

  def _check_meta_params(self, meta_params) -> None:
    base.check_meta_params(self.name, meta_params, self._expected_shapes())

  # -- the optax transformation -------------------------------------------------------------

  def features(self, grad, param, mom, rms) -> tuple[list[jax.Array], tuple, tuple]:
    """Raw (un-normalised) per-parameter features of one tensor, after the state update.

    Args:
      grad: the gradient tensor.
      param: the parameter tensor (same shape).
      mom: the K momentum tensors (float32).
      rms: the R second-moment tensors (float32).

    Returns:
      ``(features, new_mom, new_rms)``: the F float32 feature tensors in the order of
      :meth:`feature_names`, and the updated accumulators.
    """
    g = grad.astype(jnp.float32)
    p = param.astype(jnp.float32)
    new_mom = tuple(feats_lib.ema(g, m, b) for m, b in zip(mom, self.momentum_decays))
    new_rms = tuple(feats_lib.ema(g * g, v, b) for v, b in zip(rms, self.rms_decays))
    rs = [feats_lib.rsqrt_feature(v, self.rsqrt_eps) for v in new_rms]
    xs = [g, p, *new_mom, *new_rms, *rs, *(m * r for r in rs for m in new_mom)]
    return xs, new_mom, new_rms

  def feature_scales(self, grad, param, new_mom, new_rms) -> jax.Array:
    """The ``F`` per-tensor normalisers ``1/sqrt(mean(x_f²) + ε)`` of :meth:`features`."""
    return self._normalisers(self.feature_mean_squares(grad, param, new_mom, new_rms))

  def _normalisers(self, mean_squares: jax.Array) -> jax.Array:
    return jax.lax.rsqrt(mean_squares + self.norm_eps)

  def feature_mean_squares(self, grad, param, new_mom, new_rms) -> jax.Array:
    """The ``F`` mean squares ``mean(x_f²)`` over the tensor of :meth:`features`.

    Computed in one pass from the squares written without square roots
    (``(m / sqrt(v + ε))² = m² / (v + ε)``), so that XLA fuses the whole reduction with the
    state update and builds no feature tensor. Non-finite squares count as zero.
    """
    g = grad.astype(jnp.float32)
    p = param.astype(jnp.float32)
    inv = [1.0 / (v + self.rsqrt_eps) for v in new_rms]
    squares = [g * g, p * p, *(m * m for m in new_mom), *(v * v for v in new_rms), *inv,
               *(m * m * q for q in inv for m in new_mom)]
    return feats_lib.tensor_means([feats_lib.finite_or_zero(x) for x in squares])

  def shared_features(self, step, num_steps=None) -> jax.Array:
    """The ``S`` step features ``[tanh(t/τ - 1); ψ(t, T)]`` shared by every parameter."""
    return jnp.concatenate([feats_lib.tanh_time_features(step, self.time_scales),
                            feats_lib.horizon_features(step, num_steps)])

  def scale_by(self, meta_params, *, num_steps=None):
    """The raw learned step (to add to the params) as an optax transformation.

    Args:
      meta_params: from :meth:`init` (or a start of :mod:`learned_opt.inits`, meta-training,
        :func:`learned_opt.load`).
      num_steps: the run's total number of updates (enables the horizon features), or None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params,
      **extra_args)`` requires ``params`` and ignores extra keywords (``loss=`` included).
    """
    self._check_meta_params(meta_params)
    n_layers = len(self.hidden_sizes) + 1
    n_feat, n_mom, n_rms = self.num_features, len(self.momentum_decays), len(self.rms_decays)
    tensor_index = (jnp.asarray(self._tensor_feature_index()) if self.tensor is not None
                    else None)
    held = self.tensor is not None and self.tensor.held
    fuse_min_size = FUSE_MIN_SIZE

    def init_fn(params):
      zeros = lambda p: tree_utils.zeros_state(p, jnp.float32)
      tensor_z = ()
      if held:
        tensor_z = jax.tree.map(
            lambda p: (jnp.zeros(tensor_index.shape, jnp.float32) if tree_utils.is_float(p)
                       else tree_utils.placeholder()), params)
      return MLPState(count=jnp.zeros([], jnp.int32),
                      mom=tuple(jax.tree.map(zeros, params) for _ in range(n_mom)),
                      rms=tuple(jax.tree.map(zeros, params) for _ in range(n_rms)),
                      tensor_z=tensor_z)

    def update_fn(updates, state, params=None, **extra_args):
      del extra_args  # the rule reads no loss; unknown keywords are ignored
      tree_utils.require_params(self.name, params)
      tree_utils.check_trees(self.name, updates, ("params", params),
                             *(("optimizer state", s) for s in (*state.mom, *state.rms)[:1]))

      w0 = meta_params["w0"]
      shared = self.shared_features(state.count, num_steps).astype(w0.dtype)
      bias0 = meta_params["b0"] + shared @ w0[n_feat:]
      rest = [(meta_params[f"w{i}"], meta_params[f"b{i}"]) for i in range(1, n_layers)]

      first = state.count == 0
      def leaf(g, p, *acc):
        kept = acc[:1] if held else ()  # the held per-tensor features, if any
        acc = acc[len(kept):]
        if not (tree_utils.is_float(p) and tree_utils.is_float(g)):
          return tree_utils.Leaf(g, *kept, *acc)
        if g.shape != p.shape or any(a.shape != p.shape for a in acc):
          raise ValueError(f"{self.name}: update of shape {g.shape} and state of shapes "
                           f"{[a.shape for a in acc]} for a parameter of shape {p.shape}")
        xs, new_mom, new_rms = self.features(g, p, acc[:n_mom], acc[n_mom:])
        mean_squares = self.feature_mean_squares(g, p, new_mom, new_rms)
        scales = self._normalisers(mean_squares)
        bias = bias0
        if tensor_index is not None:
          z = feats_lib.tensor_log_rms(mean_squares[tensor_index])
          if held:  # the first update's features, held for the run
            z = jnp.where(first, z, kept[0])
            kept = (z,)
          bias = bias0 + z.astype(w0.dtype) @ meta_params["wt"]
        layers = [(w0[:n_feat] * scales[:, None].astype(w0.dtype), bias), *rest]
        clean = [feats_lib.finite_or_zero(x) for x in xs]
        if p.size >= fuse_min_size:
          # A barrier between the feature maths and the network. Without it XLA:CPU compiled
          # some shapes (e.g. 768x300) for minutes into gigabytes of memory; with it every
          # shape tried compiles in seconds and the network stays one vectorised loop.
          clean, layers = jax.lax.optimization_barrier((clean, layers))
          direction, magnitude = networks.fused_mlp(clean, layers)
        else:
          direction, magnitude = networks.matmul_mlp(clean, layers)
        step = direction * jnp.exp(self.exp_mult * magnitude) * self.step_mult
        step = feats_lib.nan_unless_finite(step, feats_lib.finite_entries(xs))
        return tree_utils.Leaf(step.astype(g.dtype), *kept, *new_mom, *new_rms)

      held_trees = (state.tensor_z,) if held else ()
      outs = jax.tree.map(leaf, updates, params, *held_trees, *state.mom, *state.rms)
      outs = tree_utils.unzip(outs, 1 + len(held_trees) + n_mom + n_rms)
      o = 1 + len(held_trees)
      new_state = MLPState(count=optax.safe_increment(state.count),
                           mom=tuple(outs[o:o + n_mom]), rms=tuple(outs[o + n_mom:]),
                           tensor_z=outs[1] if held else ())
      return outs[0], new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
