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
takes tiny, stable steps. Opt-in (``schedule_hidden_size > 0``), a learned schedule apart from
the per-parameter rule multiplies the whole step by ``exp(s)``, ``s`` a small global network of
the step, horizon and loss features (Celo's learned scheduler, arXiv 2501.12670); the loss
comes from optax's extra arguments, ``update(..., loss=ℓ)`` or ``value=ℓ``.

Implementation notes (speed):

* The per-tensor feature normalisers and the shared step features are folded into the first
  layer (``W₀ diag(s)`` and ``b₀ + W₀ᵀ φ(t)``), so normalised features are never built.
* For tensors with at least ``fuse_min_size`` elements the whole network is written as
  unrolled scalar-weight arithmetic on parameter-shaped arrays, which XLA compiles into one
  elementwise loop: no ``[N, features]`` or ``[N, hidden]`` array is ever materialised, the
  hidden activations live in vector registers and the loop runs at the machine's FMA rate.
  That costs compile time (a few seconds per large tensor), so smaller tensors use the
  ordinary matmul formulation (with the two-unit output layer as fused multiply-adds). Both
  compute the same function (up to float rounding order).
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
import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from learned_opt import base
from learned_opt import features as feats_lib
from learned_opt import tree_utils


# The schemes of MLPOptimizer.init.
INIT_SCHEMES = ("lecun", "adam")
# Folded into init's key for the learned schedule's weights.
_SCHEDULE_KEY = 0x5C4ED
# Bound on the schedule's log-multiplier ``s``: the step is scaled by at most e^±10.
SCHEDULE_LOG_CLIP = 10.0
# ε under the mean square of a step normalised per tensor (schedule_normalize).
_STEP_NORM_EPS = 1e-12
# Folded into init's key for the per-tensor features' weights.
_TENSOR_KEY = 0x7E450


class ScheduleState(NamedTuple):
  """Loss statistics of :class:`MLPOptimizer`'s learned schedule (one per run, not per parameter).

  Attributes:
    loss_emas: the uncorrected moving averages of the loss, one per
      :attr:`MLPOptimizer.schedule_loss_decays` (float32 vector).
    loss_count: number of (finite, positive) losses averaged so far (int32 scalar).
    initial_loss: the first such loss (float32 scalar; 0 while ``loss_count`` is 0).
  """

  loss_emas: jax.Array
  loss_count: jax.Array
  initial_loss: jax.Array


class MLPState(NamedTuple):
  """State of :class:`MLPOptimizer`.

  Attributes:
    count: number of updates applied so far (int32 scalar); the step ``t`` of the time features.
    mom: one tree per momentum decay, each shaped like the params (float32).
    rms: one tree per second-moment decay, each shaped like the params (float32).
    schedule: the :class:`ScheduleState` of the learned schedule, or ``()`` without one.
    tensor_z: with :attr:`MLPOptimizer.tensor_features_initial`, the per-tensor features of the
      first update, one ``(Z,)`` vector per parameter tensor (held for the run); ``()``
      otherwise.

  Integer and boolean leaves hold an empty ``(0,)`` float32 placeholder instead.
  """

  count: jax.Array
  mom: tuple[optax.Updates, ...]
  rms: tuple[optax.Updates, ...]
  schedule: ScheduleState | tuple = ()
  tensor_z: optax.Updates | tuple = ()


def _fused_mlp(xs: Sequence[jax.Array], layers: Sequence[tuple[jax.Array, jax.Array]]):
  """A ReLU MLP applied elementwise, written as unrolled scalar-weight arithmetic.

  .. math::
    h^{(0)} = x,\\quad h^{(l+1)}_j = \\mathrm{relu}\\big(b_j + \\textstyle\\sum_i W_{ij} h^{(l)}_i\\big)

  (no ReLU after the last layer). Each ``h_j`` is an array shaped like the inputs, so XLA fuses
  the whole network into one elementwise loop.

  Args:
    xs: the input features, arrays of one common shape.
    layers: ``(W, b)`` per layer, ``W`` of shape ``(fan_in, fan_out)``.

  Returns:
    The list of output arrays (one per output unit).
  """
  h = list(xs)
  for depth, (w, b) in enumerate(layers):
    out = []
    for j in range(w.shape[1]):
      # Scalars are indexed from the whole matrix (not row by row) so that the fused loop
      # keeps few operands: LLVM's vectoriser gives up on loops with many pointer operands.
      acc = h[0] * w[0, j]
      for i in range(1, len(h)):
        acc = acc + h[i] * w[i, j]
      acc = acc + b[j]
      out.append(jax.nn.relu(acc) if depth < len(layers) - 1 else acc)
    h = out
  return h


def _matmul_mlp(xs: Sequence[jax.Array], layers: Sequence[tuple[jax.Array, jax.Array]]):
  """The same network as :func:`_fused_mlp` with matmuls on ``[n, width]``, for small tensors.

  The output layer (``fan_out = 2``) is written as unrolled multiply-adds on the columns of the
  last hidden layer: XLA fuses it with the step computation that consumes it, where a matmul
  with two output columns is a library call that costs more than the rest of the network at
  these sizes.
  """
  shape = xs[0].shape
  h = jnp.stack([x.reshape(-1) for x in xs], axis=-1)
  for w, b in layers[:-1]:
    h = jax.nn.relu(jnp.dot(h, w, precision=jax.lax.Precision.HIGHEST) + b)
  w, b = layers[-1]
  cols = [h[:, i] for i in range(w.shape[0])]
  return [functools.reduce(jnp.add, [c * w[i, j] for i, c in enumerate(cols)]).reshape(shape)
          + b[j] for j in range(w.shape[1])]


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
  and ``S`` = :attr:`num_shared_features` step features. Weights are LeCun-normal, biases zero.

  With a learned schedule (:attr:`schedule_hidden_size` ``= H_s > 0``) the step is
  ``u · exp(s)`` (:meth:`schedule_log_multiplier`), one ``s`` per step for the whole run, and
  the meta-parameters add ``"sched_w0": (S + L, H_s), "sched_b0": (H_s,), "sched_w1": (H_s,
  1), "sched_b1": (1,)`` (``L`` = ``len(schedule_loss_decays) + 1`` loss features). The output
  layer starts at zero, so :meth:`init` gives ``s = 0``: the same updates, bit for bit, as
  without the schedule. The loss is read from ``update(..., loss=ℓ)`` (or ``value=ℓ``); without
  it, or when it is non-finite or not positive, the loss features are zero and the loss
  statistics in the state are left unchanged (:func:`learned_opt.features.loss_features`).

  With per-tensor features (:attr:`tensor_features`) the first layer also reads, per tensor,
  ``z = log10 RMS`` of the gradient, the parameter and the ratios ``m_k v_r^{-1/2}``
  (:func:`learned_opt.features.tensor_log_rms`) through ``"wt": (Z, H₀)``: its first-layer
  bias becomes ``b₀ + W₀ᵀ[φ(t); ψ(t, T)] + W_tᵀ z``.

  The update's sign is learned (``u`` is added to the params). Updates have their parameter's
  dtype; the state is float32 whatever the parameter dtype. Integer and boolean leaves (and
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
    fuse_min_size: tensors with at least this many elements use the fused elementwise network
      (fast, compiles in seconds); smaller ones use matmuls (compiles instantly). Any value gives
      the same function.
    init_scheme: how :meth:`init` draws the meta-parameters: ``"lecun"`` (random network, tiny
      steps, not a descent method) or ``"adam"`` (the network computes a per-tensor normalised
      Adam step, see :meth:`init`).
    init_learning_rate: for ``init_scheme="adam"``, the RMS over each tensor of the initial step.
    init_decay: for ``init_scheme="adam"``, ``k`` of an initial decay ``exp(-k t/T)`` of the step
      over a run of known length ``T = num_steps`` (no decay without ``num_steps``).
    schedule_hidden_size: ``0`` (the default) for no learned schedule; ``H > 0`` adds one: a
      global network with one hidden ReLU layer of width ``H`` that reads the step features
      and the loss features and multiplies the whole step by ``exp(s)`` (see
      :meth:`schedule_log_multiplier`). It needs the loss: ``update(..., loss=ℓ)`` (or
      optax's ``value=ℓ``); without it the loss features are zero.
    schedule_loss_decays: the decays ``β`` of the loss's moving averages the schedule reads.
    tensor_features: add per-tensor scale features (:meth:`tensor_feature_names`): the
      log-RMS over the tensor of the gradient, the parameter and the Adam-like ratios
      (:func:`learned_opt.features.tensor_log_rms`), one number per tensor and feature, read
      by the first layer through their own weights ``"wt": (Z, H₀)`` (added to the tensor's
      first-layer bias). The per-parameter features are scale-free; these tell the network how
      large a tensor's parameters and gradients are and how consistent its gradient is, so it
      can size its step per task (a quadratic with parameters of order one against a
      classifier's small weights). :meth:`init` gives the Adam-like units zero weights from
      them, so the ``"adam"`` start is unchanged.
    tensor_grad_feature: with :attr:`tensor_features`, whether they include the gradient's
      log-RMS. It is the only one that follows the loss's scale from step to step: a gradient
      spike (a diffusion loss at a small noise level) moves it at once, and a network that
      learned larger steps for larger gradients then feeds the spike. ``False`` keeps the
      parameter's scale and the ratios' consistency only.
    tensor_features_initial: with :attr:`tensor_features`, compute them at the run's first
      update only and hold them for the rest of the run (in :attr:`MLPState.tensor_z`). They
      still tell the network the task's scale (the initial parameters' and gradients' RMS),
      but parameters or gradients that grow during a long run can no longer feed their own
      step size through them: the rule's per-tensor input is then constant in time. Measured
      in ``reports/experiments/LOG.md`` (#46/#47): it did not make long runs more stable.
    schedule_normalize: with a learned schedule, divide each tensor's rule output by its RMS
      over the tensor so that the schedule alone sets the step size (Celo2-style):
      ``u = λ exp(s) ũ`` with ``λ`` = :attr:`init_learning_rate` and ``ũ`` the normalised
      ``d exp(a μ)``. :meth:`init` then puts the ``init_decay`` into the schedule
      (``s = -k t/T``), so the initial optimizer is the lever-off one up to the feature
      normaliser's ``ε`` (the normalised Adam ratio's RMS is slightly below 1 there).

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
  fuse_min_size: int = 16384
  init_scheme: str = "lecun"
  init_learning_rate: float = 5e-3
  init_decay: float = 0.0
  schedule_hidden_size: int = 0
  schedule_loss_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
  schedule_normalize: bool = False
  tensor_features: bool = False
  tensor_grad_feature: bool = True
  tensor_features_initial: bool = False

  def __post_init__(self):
    if self.init_scheme not in INIT_SCHEMES:
      raise ValueError(f"init_scheme must be one of {list(INIT_SCHEMES)}, "
                       f"got {self.init_scheme!r}")
    if not self.init_learning_rate > 0:
      raise ValueError(f"init_learning_rate must be > 0, got {self.init_learning_rate!r}")
    if not self.init_decay >= 0:
      raise ValueError(f"init_decay must be >= 0, got {self.init_decay!r}")
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
    if not (isinstance(self.schedule_hidden_size, int) and self.schedule_hidden_size >= 0):
      raise ValueError(f"schedule_hidden_size must be an int >= 0 (0: no learned schedule), "
                       f"got {self.schedule_hidden_size!r}")
    decays = tuple(float(d) for d in self.schedule_loss_decays)
    if not all(0.0 <= d < 1.0 for d in decays):
      raise ValueError(f"schedule_loss_decays must lie in [0, 1), got {decays!r}")
    object.__setattr__(self, "schedule_loss_decays", decays)
    if not self.tensor_grad_feature and not self.tensor_features:
      raise ValueError("tensor_grad_feature=False only applies with tensor_features=True")
    if self.tensor_features_initial and not self.tensor_features:
      raise ValueError("tensor_features_initial=True only applies with tensor_features=True")
    if self.schedule_normalize and not self.schedule_hidden_size:
      raise ValueError("schedule_normalize=True needs a learned schedule "
                       "(schedule_hidden_size > 0), got schedule_hidden_size=0")

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
    if not self.tensor_features:
      return []
    names = self.feature_names()
    return [f"log_rms_{names[i]}" for i in self._tensor_feature_index()]

  def _tensor_feature_index(self) -> list[int]:
    """Which per-parameter features' RMS the per-tensor features read."""
    k, r = len(self.momentum_decays), len(self.rms_decays)
    f = self.num_features
    grad = [0] if self.tensor_grad_feature else []
    return [*grad, 1, *range(f - k * r, f)]  # grad, param, then every m_k / sqrt(v_r)

  @property
  def num_shared_features(self) -> int:
    """``S``: step features shared by all parameters (time, then horizon)."""
    return len(self.time_scales) + feats_lib.NUM_HORIZON_FEATURES

  @property
  def num_schedule_inputs(self) -> int:
    """Inputs of the learned schedule: the ``S`` step features and the loss features."""
    return self.num_shared_features + len(self.schedule_loss_decays) + 1

  def _layer_shapes(self) -> list[tuple[int, int]]:
    sizes = [self.num_features + self.num_shared_features, *self.hidden_sizes, 2]
    return list(zip(sizes[:-1], sizes[1:]))

  def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
    expected = {}
    for i, (fan_in, fan_out) in enumerate(self._layer_shapes()):
      expected[f"w{i}"], expected[f"b{i}"] = (fan_in, fan_out), (fan_out,)
    if self.schedule_hidden_size:
      h = self.schedule_hidden_size
      expected.update(sched_w0=(self.num_schedule_inputs, h), sched_b0=(h,),
                      sched_w1=(h, 1), sched_b1=(1,))
    if self.tensor_features:
      expected["wt"] = (len(self._tensor_feature_index()), self._layer_shapes()[0][1])
    return expected

  # -- meta-parameters ----------------------------------------------------------------------

  def init(self, key: jax.Array) -> base.MetaParams:
    """Initial meta-parameters, by :attr:`init_scheme`.

    ``"lecun"``: LeCun-normal weights ``N(0, 1/fan_in)`` and zero biases for every layer.

    ``"adam"``: the same random network, except that two units per hidden layer carry the
    normalised Adam ratio ``r̃ = m_β v^{-1/2} / \\sqrt{mean_tensor((m_β v^{-1/2})^2) + ε}``
    (``β`` the momentum decay nearest 0.9, ``v`` the first second moment) as the ReLU pair
    ``(relu(r̃), relu(-r̃))``, the direction output is ``d = -(λ / b) (relu(r̃) - relu(-r̃))``
    and the magnitude output is zero, so the step is

    .. math::
      u = -λ\\, r̃

    with ``λ`` = :attr:`init_learning_rate`: Adam's direction with a per-tensor RMS of ``λ``
    (the first step is exactly ``-λ sign(g)``, as Adam's). With :attr:`init_decay` ``k > 0`` a
    third unit carries the fraction of the run done, ``t/T``, to the magnitude output with
    weight ``-k/a``, so the step is ``-λ exp(-k t/T) r̃`` when ``num_steps`` is given (and the
    undecayed step without it: the horizon features are then zero). The other units' output weights
    are zero, so meta-training starts from a descent method (NN-Adam of
    ``learned_optimization``; Celo-Adam, arXiv 2501.12670, Sec. 3) and can grow away from it.
    """
    shapes = self._layer_shapes()
    keys = jax.random.split(key, len(shapes))
    theta = {}
    for i, ((fan_in, fan_out), k) in enumerate(zip(shapes, keys)):
      theta[f"w{i}"] = jax.random.normal(k, (fan_in, fan_out), jnp.float32) / math.sqrt(fan_in)
      theta[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
    if self.init_scheme == "adam":
      theta = self._adam_like(theta)
    if self.tensor_features:  # its own key: the rule's other draws are unchanged
      n_z, (fan_in, width) = len(self._tensor_feature_index()), shapes[0]
      k = jax.random.fold_in(key, _TENSOR_KEY)
      wt = jax.random.normal(k, (n_z, width), jnp.float32) / math.sqrt(fan_in + n_z)
      if self.init_scheme == "adam":  # the Adam-like units read no per-tensor feature
        wt = wt.at[:, :self._num_adam_units()].set(0.0)
      theta["wt"] = wt
    if self.schedule_hidden_size:  # its own key: the update rule's draws are unchanged
      fan_in = self.num_schedule_inputs
      k = jax.random.fold_in(key, _SCHEDULE_KEY)
      theta["sched_w0"] = (jax.random.normal(k, (fan_in, self.schedule_hidden_size), jnp.float32)
                           / math.sqrt(fan_in))
      theta["sched_b0"] = jnp.zeros((self.schedule_hidden_size,), jnp.float32)
      theta["sched_w1"] = jnp.zeros((self.schedule_hidden_size, 1), jnp.float32)
      theta["sched_b1"] = jnp.zeros((1,), jnp.float32)
      if self.schedule_normalize and self.init_scheme == "adam" and self.init_decay > 0:
        # The rule's decay is normalised away: unit 0 carries t/T to s with weight -k.
        frac = len(self.time_scales)
        theta["sched_w0"] = theta["sched_w0"].at[:, 0].set(0.0).at[frac, 0].set(1.0)
        theta["sched_w1"] = theta["sched_w1"].at[0, 0].set(-self.init_decay)
    return theta

  def _num_adam_units(self) -> int:
    """Hidden units per layer the ``"adam"`` start uses: the ratio's ReLU pair, and ``t/T``
    with :attr:`init_decay`."""
    return 3 if self.init_decay > 0 else 2

  def _adam_like(self, theta: base.MetaParams) -> base.MetaParams:
    """Overwrites the weights of :meth:`init`'s ``"adam"`` scheme (docstring there)."""
    need = self._num_adam_units()
    if min(self.hidden_sizes, default=0) < need:
      raise ValueError(f"init_scheme='adam' needs at least one hidden layer, each of width >= "
                       f"{need}{' (init_decay > 0)' if need == 3 else ''}, "
                       f"got hidden_sizes={self.hidden_sizes!r}")
    beta = min(self.momentum_decays, key=lambda b: abs(b - 0.9))
    ratio = self.feature_names().index(f"mom_{beta}*rsqrt_rms_{self.rms_decays[0]}")
    n_layers = len(self.hidden_sizes) + 1
    w0 = theta["w0"].at[:, :2].set(0.0)
    theta["w0"] = w0.at[ratio, 0].set(1.0).at[ratio, 1].set(-1.0)
    theta["b0"] = theta["b0"].at[:2].set(0.0)
    for i in range(1, n_layers - 1):  # the pair passes through the middle layers unchanged
      w = theta[f"w{i}"].at[:, :2].set(0.0)
      theta[f"w{i}"] = w.at[0, 0].set(1.0).at[1, 1].set(1.0)
      theta[f"b{i}"] = theta[f"b{i}"].at[:2].set(0.0)
    gain = self.init_learning_rate / self.step_mult
    w_out = jnp.zeros_like(theta[f"w{n_layers - 1}"])
    theta[f"w{n_layers - 1}"] = w_out.at[0, 0].set(-gain).at[1, 0].set(gain)
    theta[f"b{n_layers - 1}"] = jnp.zeros_like(theta[f"b{n_layers - 1}"])
    if self.init_decay > 0:  # unit 2 carries t/T (the first horizon feature) to the magnitude
      frac = self.num_features + len(self.time_scales)
      theta["w0"] = theta["w0"].at[:, 2].set(0.0).at[frac, 2].set(1.0)
      theta["b0"] = theta["b0"].at[2].set(0.0)
      for i in range(1, n_layers - 1):
        theta[f"w{i}"] = theta[f"w{i}"].at[:, 2].set(0.0).at[2, 2].set(1.0)
        theta[f"b{i}"] = theta[f"b{i}"].at[2].set(0.0)
      last = f"w{n_layers - 1}"
      theta[last] = theta[last].at[2, 1].set(-self.init_decay / self.exp_mult)
    return theta

  def _check_meta_params(self, meta_params) -> None:
    expected = self._expected_shapes()
    if not isinstance(meta_params, dict) or set(meta_params) != set(expected):
      got = sorted(meta_params) if isinstance(meta_params, dict) else type(meta_params)
      raise ValueError(f"{self.name}: meta_params must be a dict with keys {sorted(expected)}, "
                       f"got {got}")
    for k, shape in expected.items():
      if tuple(jnp.shape(meta_params[k])) != shape:
        raise ValueError(f"{self.name}: meta_params[{k!r}] has shape "
                         f"{tuple(jnp.shape(meta_params[k]))}, expected {shape} for this config")

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

  def schedule_log_multiplier(self, meta_params, shared: jax.Array,
                              loss_feats: jax.Array) -> jax.Array:
    """The learned schedule's log step multiplier ``s`` (a scalar; the step is scaled by e^s).

    .. math::
      s = \\mathrm{clip}\\big(W_1^\\top \\mathrm{relu}(W_0^\\top [φ(t);\\ ψ(t, T);\\ f_\\ell] + b_0)
      + b_1,\\ -10,\\ 10\\big)

    with ``φ, ψ`` the step and horizon features and ``f_ℓ`` the loss features
    (:func:`learned_opt.features.loss_features`). One network per run, apart from the
    per-parameter rule: Celo's learned scheduler (arXiv 2501.12670, Sec. 3) as a small MLP.

    Args:
      meta_params: with the ``sched_*`` entries of :meth:`init`.
      shared: :meth:`shared_features` of the step.
      loss_feats: the loss features of the step.

    Returns:
      A float32 scalar.
    """
    x = jnp.concatenate([shared, loss_feats]).astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    h = jax.nn.relu(jnp.dot(x, meta_params["sched_w0"], precision=hi) + meta_params["sched_b0"])
    s = jnp.dot(h, meta_params["sched_w1"], precision=hi)[0] + meta_params["sched_b1"][0]
    return jnp.clip(s, -SCHEDULE_LOG_CLIP, SCHEDULE_LOG_CLIP)

  def scale_by(self, meta_params, *, num_steps=None):
    """The raw learned step (to add to the params) as an optax transformation.

    Args:
      meta_params: from :meth:`init` (or meta-training / :func:`learned_opt.load`).
      num_steps: the run's total number of updates (enables the horizon features), or None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params,
      **extra_args)`` requires ``params``, accepts ``loss=`` (or optax's ``value=``, the
      convention of ``optax.contrib.reduce_on_plateau``) and ignores unknown keywords. Only
      the learned schedule (:attr:`schedule_hidden_size` > 0) reads the loss; without it the
      loss features are zero.
    """
    self._check_meta_params(meta_params)
    n_layers = len(self.hidden_sizes) + 1
    n_feat, n_mom, n_rms = self.num_features, len(self.momentum_decays), len(self.rms_decays)

    scheduled = bool(self.schedule_hidden_size)
    tensor_index = (jnp.asarray(self._tensor_feature_index()) if self.tensor_features
                    else None)
    held = self.tensor_features_initial

    def init_fn(params):
      zeros = lambda p: tree_utils.zeros_state(p, jnp.float32)
      schedule = ()
      if scheduled:
        schedule = ScheduleState(
            loss_emas=jnp.zeros((len(self.schedule_loss_decays),), jnp.float32),
            loss_count=jnp.zeros([], jnp.int32), initial_loss=jnp.zeros([], jnp.float32))
      tensor_z = ()
      if held:
        tensor_z = jax.tree.map(
            lambda p: (jnp.zeros(tensor_index.shape, jnp.float32) if tree_utils.is_float(p)
                       else tree_utils.placeholder()), params)
      return MLPState(count=jnp.zeros([], jnp.int32),
                      mom=tuple(jax.tree.map(zeros, params) for _ in range(n_mom)),
                      rms=tuple(jax.tree.map(zeros, params) for _ in range(n_rms)),
                      schedule=schedule, tensor_z=tensor_z)

    def update_fn(updates, state, params=None, **extra_args):
      # `loss=` (or `value=`) feeds the learned schedule; unknown keywords are ignored.
      loss = extra_args.get("loss", extra_args.get("value"))
      tree_utils.require_params(self.name, params)
      tree_utils.check_trees(self.name, updates, ("params", params),
                             *(("optimizer state", s) for s in (*state.mom, *state.rms)[:1]))

      w0 = meta_params["w0"]
      shared = self.shared_features(state.count, num_steps).astype(w0.dtype)
      bias0 = meta_params["b0"] + shared @ w0[n_feat:]
      new_schedule, multiplier = (), None
      if scheduled:
        sched = state.schedule
        loss_feats, emas, n_loss, initial = feats_lib.loss_features(
            loss, sched.loss_emas, sched.loss_count, sched.initial_loss,
            self.schedule_loss_decays)
        new_schedule = ScheduleState(loss_emas=emas, loss_count=n_loss, initial_loss=initial)
        multiplier = jnp.exp(self.schedule_log_multiplier(meta_params, shared, loss_feats))
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
        shape = p.shape
        fused = p.size >= self.fuse_min_size
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
        if fused:
          # A barrier between the feature maths and the network. Without it XLA:CPU compiled
          # some shapes (e.g. 768x300) for minutes into gigabytes of memory; with it every
          # shape tried compiles in seconds and the network stays one vectorised loop.
          clean, layers = jax.lax.optimization_barrier((clean, layers))
          direction, magnitude = _fused_mlp(clean, layers)
        else:
          direction, magnitude = _matmul_mlp(clean, layers)
        if self.schedule_normalize:  # Celo2-style: the schedule alone sets the step size
          step = direction * jnp.exp(self.exp_mult * magnitude)
          step = step * feats_lib.inverse_rms(step, _STEP_NORM_EPS) * self.init_learning_rate
        else:
          step = direction * jnp.exp(self.exp_mult * magnitude) * self.step_mult
        if multiplier is not None:
          step = step * multiplier.astype(step.dtype)
        step = feats_lib.nan_unless_finite(step, feats_lib.finite_entries(xs))
        return tree_utils.Leaf(step.astype(p.dtype), *kept, *new_mom, *new_rms)

      held_trees = (state.tensor_z,) if held else ()
      outs = jax.tree.map(leaf, updates, params, *held_trees, *state.mom, *state.rms)
      outs = tree_utils.unzip(outs, 1 + len(held_trees) + n_mom + n_rms)
      o = 1 + len(held_trees)
      new_state = MLPState(count=optax.safe_increment(state.count),
                           mom=tuple(outs[o:o + n_mom]), rms=tuple(outs[o + n_mom:]),
                           schedule=new_schedule, tensor_z=outs[1] if held else ())
      return outs[0], new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
