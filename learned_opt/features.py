"""Per-parameter feature maths shared by the learned optimizers.

A per-parameter learned optimizer reads, for every element of every parameter tensor, a vector
of features: the gradient, the parameter, momenta and second-moment accumulators at several
decays and products of those (Metz et al. 2020, arXiv 2009.11243, Sec. 3; Metz et al. 2022,
arXiv 2203.11860, Sec. 3 "small_fc_lopt"/"mlp_lopt"). Each feature is divided by its
root-mean-square over the tensor, so that the network sees inputs of unit second moment whatever
the scale of the problem:

.. math::
  \\tilde x = x / \\sqrt{\\mathrm{mean}_{\\text{tensor}}(x^2) + ε}

and features shared by the whole step (training-step and horizon embeddings) are appended
un-normalised. The helpers here are small pure functions of arrays so that each architecture can
compose them inside its own fused per-tensor computation.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

#: Default ``ε`` under a feature's mean square (as in learned_optimization's ``mlp_lopt``).
NORM_EPS = 1e-5
#: Default ``ε`` under a second-moment accumulator before its reciprocal square root.
RSQRT_EPS = 1e-8


def finite_or_zero(x: jax.Array) -> jax.Array:
  """Replaces non-finite entries (``nan``, ``±inf``) of ``x`` by zero."""
  return jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x))


def inverse_rms(x: jax.Array, eps: float = NORM_EPS) -> jax.Array:
  """The scalar ``1 / sqrt(mean(x²) + ε)`` over the whole tensor.

  .. math::
    s(x) = \\left(\\tfrac{1}{n}\\textstyle\\sum_i x_i^2 + ε\\right)^{-1/2}

  Non-finite entries count as zero, so one bad element cannot poison the tensor's normaliser.
  Multiplying a feature by ``s`` (or, equivalently, the weights that read it) normalises it.

  Args:
    x: a feature, any shape (a scalar is a tensor of one element).
    eps: added to the mean square.

  Returns:
    A float32 scalar.
  """
  x = finite_or_zero(x.astype(jnp.promote_types(x.dtype, jnp.float32)))
  return jax.lax.rsqrt(jnp.mean(jnp.square(x)) + eps)


def _variadic_mean(values: Sequence[jax.Array]) -> jax.Array:
  n = values[0].size
  zeros = [jnp.zeros((), v.dtype) for v in values]
  sums = jax.lax.reduce(list(values), zeros, lambda a, b: [x + y for x, y in zip(a, b)],
                        tuple(range(values[0].ndim)))
  return jnp.stack(sums) / n


@jax.custom_jvp
def tensor_means(values: Sequence[jax.Array]) -> jax.Array:
  """Means of several same-shaped tensors over all their elements, in one pass.

  .. math::
    \\bar x_f = \\tfrac{1}{n} \\textstyle\\sum_i x_{f,i}

  Written as one variadic reduction so that XLA computes the ``F`` means in a single loop that
  also computes the (cheap, elementwise) inputs: on CPU this avoids materialising each input
  as a temporary array, which ``F`` separate ``jnp.mean`` calls do. Differentiable (forward and
  reverse) and vmappable.

  Args:
    values: ``F`` float arrays of one common shape (at least one element).

  Returns:
    A vector of ``F`` means.
  """
  return _variadic_mean(values)


@tensor_means.defjvp
def _tensor_means_jvp(primals, tangents):
  (values,), (dvalues,) = primals, tangents
  means = _variadic_mean(values)
  dmeans = jnp.stack([jnp.mean(d.astype(v.dtype)) for v, d in zip(values, dvalues)])
  return means, dmeans


def second_moment_normalize(x: jax.Array, eps: float = NORM_EPS) -> jax.Array:
  """Divides ``x`` by its root-mean-square over the whole tensor: ``x * inverse_rms(x)``.

  Args:
    x: a feature, any shape.
    eps: added to the mean square.

  Returns:
    ``x / sqrt(mean(x²) + ε)``, same shape (float32 or wider).
  """
  return x.astype(jnp.promote_types(x.dtype, jnp.float32)) * inverse_rms(x, eps)


def ema(x: jax.Array, acc: jax.Array, decay, one_minus_decay=None) -> jax.Array:
  """One exponential-moving-average step ``β acc + (1 - β) x`` (a momentum or RMS update).

  .. math::
    m_t = β\\, m_{t-1} + (1 - β)\\, x_t

  Args:
    x: the new value (gradient, or squared gradient for second moments).
    acc: the accumulator, same shape as ``x``.
    decay: ``β`` in ``[0, 1)``, a Python float or a traced scalar.
    one_minus_decay: ``1 - β`` when the caller has it more accurately than ``1 - decay``
      (e.g. ``sigmoid(-x)`` for a learned ``β = sigmoid(x)`` that rounds to 1); computed as
      ``1 - decay`` when ``None``.

  Returns:
    The updated accumulator, in ``acc``'s dtype.
  """
  if one_minus_decay is None:
    one_minus_decay = 1.0 - decay
  return (decay * acc + one_minus_decay * x).astype(acc.dtype)


def rsqrt_feature(v: jax.Array, eps: float = RSQRT_EPS) -> jax.Array:
  """``1 / sqrt(v + ε)`` of a second-moment accumulator ``v`` (elementwise).

  Written ``sqrt(1 / (v + ε))``: XLA:CPU lowers ``rsqrt`` to a call that LLVM's loop vectoriser
  does not widen in large fused loops, which made the fused MLP step ~8x slower.
  """
  return jnp.sqrt(1.0 / (v + eps))


def finite_entries(features: Sequence[jax.Array]) -> jax.Array:
  """The boolean mask of the entries where every feature is finite (no ``nan``, no ``±inf``).

  Args:
    features: the raw per-parameter features of one tensor, arrays of one common shape.

  Returns:
    A boolean array of that shape.
  """
  return functools.reduce(jnp.logical_and, [jnp.isfinite(x) for x in features])


def nan_unless_finite(step: jax.Array, finite: jax.Array) -> jax.Array:
  """``step`` where ``finite`` holds, ``nan`` elsewhere.

  The learned optimizers feed their network features with the non-finite entries zeroed (so
  that a bad entry cannot poison its neighbours, nor meta-gradients) and then mark the entries
  whose features were not finite (:func:`finite_entries`): a non-finite gradient or state entry
  gives a ``nan`` update at that entry only.

  Args:
    step: the update of one tensor.
    finite: :func:`finite_entries` of that tensor's features (same shape as ``step``).

  Returns:
    ``step`` with ``nan`` wherever ``finite`` is False.
  """
  return jnp.where(finite, step, jnp.nan)


def check_time_scales(time_scales: Sequence[float]) -> tuple[float, ...]:
  """Validates the time-feature timescales τ of a config; returns them as a tuple of floats.

  Raises:
    ValueError: if any timescale is not positive.
  """
  scales = tuple(float(s) for s in time_scales)
  if not all(s > 0 for s in scales):
    raise ValueError(f"time_scales must be positive, got {scales!r}")
  return scales


def check_loss_decays(loss_decays: Sequence[float]) -> tuple[float, ...]:
  """Validates the decays of the loss's moving averages (:func:`loss_features`); returns them
  as a tuple of floats.

  Raises:
    ValueError: if any decay lies outside ``[0, 1)``.
  """
  decays = tuple(float(d) for d in loss_decays)
  if not all(0.0 <= d < 1.0 for d in decays):
    raise ValueError(f"loss_decays must lie in [0, 1), got {decays!r}")
  return decays


def tanh_time_features(step: jax.Array, timescales: Sequence[float]) -> jax.Array:
  """Training-step embedding ``tanh(t / τ - 1)`` for each timescale ``τ``.

  .. math::
    φ_τ(t) = \\tanh(t / τ - 1)

  (learned_optimization's ``mlp_lopt``, arXiv 2203.11860.) Each entry moves from ``tanh(-1)``
  at ``t = 0`` towards 1 once ``t ≫ τ``, so log-spaced ``τ`` tell the network the step count on
  a log scale.

  Args:
    step: the number of updates already applied (an integer or float scalar).
    timescales: the ``τ`` (positive).

  Returns:
    A float32 vector of ``len(timescales)`` entries.
  """
  taus = jnp.asarray(timescales, jnp.float32)
  return jnp.tanh(jnp.asarray(step, jnp.float32) / taus - 1.0)


#: Number of entries of :func:`horizon_features`.
NUM_HORIZON_FEATURES = 2


def horizon_features(step: jax.Array, num_steps) -> jax.Array:
  """Embedding of the training horizon ``T``: ``(t / T, log10(T) / 5)``, zeros if ``T`` is None.

  .. math::
    ψ(t, T) = \\left(t / T,\\; \\log_{10}(T) / 5\\right)

  The first entry is the fraction of training done, the second the (log) length of the run,
  so a horizon-aware optimizer can schedule its steps. Without a horizon both are zero, which
  makes the same meta-parameters usable with and without ``num_steps``.

  Args:
    step: the number of updates already applied.
    num_steps: the total number of updates ``T`` of the run (a Python int, a traced scalar) or
      ``None``.

  Returns:
    A float32 vector of :data:`NUM_HORIZON_FEATURES` entries.
  """
  if num_steps is None:
    return jnp.zeros((NUM_HORIZON_FEATURES,), jnp.float32)
  t = jnp.asarray(step, jnp.float32)
  horizon = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
  return jnp.stack([t / horizon, jnp.log10(horizon) / 5.0])


#: Bound on the loss features of :func:`loss_features` (``|log ratio| <= 5``: a factor ~150).
LOSS_FEATURE_CLIP = 5.0


def loss_features(loss, emas: jax.Array, count: jax.Array, initial: jax.Array,
                  decays: Sequence[float], clip: float = LOSS_FEATURE_CLIP):
  """Features of the training loss relative to its running averages, and the updated averages.

  .. math::
    e_β &\\leftarrow β\\, e_β + (1 - β)\\, \\ell,\\qquad
    \\hat e_β = e_β / (1 - β^n) \\\\
    f &= \\mathrm{clip}\\big(\\big[\\log(\\ell / \\hat e_β)\\ \\text{for each } β;\\
    \\log(\\ell / \\ell_0)\\big],\\ -c,\\ c\\big)

  with ``n`` the number of losses averaged so far (this one included) and ``ℓ₀`` the first
  one: below zero when the loss is falling faster than its average, near zero on a plateau
  (the loss-relative inputs of Celo's learned scheduler, arXiv 2501.12670, Sec. 3). A loss that
  is missing (``None``), non-finite or not positive gives zero features and leaves the
  averages, ``n`` and ``ℓ₀`` unchanged, so the state never holds a non-finite value.

  Args:
    loss: the training loss of this step (a scalar), or ``None``.
    emas: the ``len(decays)`` uncorrected averages ``e_β`` (float32, zeros at the start).
    count: ``n`` before this step (int32 scalar).
    initial: ``ℓ₀`` (float32 scalar; any value while ``n = 0``).
    decays: the ``β`` in ``[0, 1)``.
    clip: ``c``.

  Returns:
    ``(features, new_emas, new_count, new_initial)``; ``features`` is a float32 vector of
    ``len(decays) + 1`` entries.
  """
  num = len(decays) + 1
  if loss is None:
    return jnp.zeros((num,), jnp.float32), emas, count, initial
  loss = jnp.asarray(loss)
  if loss.shape != ():
    raise ValueError(f"the loss passed to the optimizer must be a scalar, got shape {loss.shape}")
  loss = loss.astype(jnp.float32)
  valid = jnp.isfinite(loss) & (loss > 0)
  safe = jnp.where(valid, loss, 1.0)
  betas = jnp.asarray(decays, jnp.float32)
  new_count = count + valid.astype(count.dtype)
  new_emas = jnp.where(valid, betas * emas + (1.0 - betas) * safe, emas).astype(emas.dtype)
  new_initial = jnp.where(valid & (count == 0), safe, initial).astype(initial.dtype)
  # After a valid loss n >= 1, so the correction is positive; the guard only keeps the masked
  # branch finite.
  correction = jnp.where(valid, 1.0 - betas ** new_count.astype(jnp.float32), 1.0)
  averages = jnp.where(valid, new_emas / correction, 1.0)
  ratios = jnp.log(safe) - jnp.log(jnp.concatenate([averages, jnp.where(valid, new_initial,
                                                                       1.0)[None]]))
  features = jnp.clip(ratios, -clip, clip)
  return jnp.where(valid, features, 0.0).astype(jnp.float32), new_emas, new_count, new_initial


#: ``ε`` under a mean square before its log in :func:`tensor_log_rms` (an RMS floor of 1e-15).
LOG_RMS_EPS = 1e-30
#: :func:`tensor_log_rms` divides ``log10(rms)`` by this and clips the result to ``±``
#: :data:`TENSOR_FEATURE_CLIP` (an RMS of 1e-9 … 1e9 maps into the clip range).
TENSOR_FEATURE_DIVISOR = 3.0
TENSOR_FEATURE_CLIP = 3.0


def tensor_log_rms(mean_squares: jax.Array) -> jax.Array:
  """Per-tensor scale features: the log of a feature's root-mean-square over the tensor.

  .. math::
    z_f = \\mathrm{clip}\\big(\\log_{10}\\sqrt{\\overline{x_f^2} + ε}\\ /\\ 3,\\ -3,\\ 3\\big)

  The per-parameter features are divided by their RMS over the tensor (scale-free by design);
  these put back the scales themselves, one number per tensor and feature, so that a network
  reading them can tell a tensor of large parameters or gradients from one of small ones (the
  per-tensor inputs of VeLO, arXiv 2211.09760, Sec. 3.1, as plain features of the rule).
  Non-finite mean squares give zero.

  Args:
    mean_squares: ``mean(x_f²)`` over the tensor, one per feature (a vector).

  Returns:
    A float32 vector, same length.
  """
  ms = finite_or_zero(mean_squares.astype(jnp.float32))
  z = 0.5 * jnp.log10(ms + LOG_RMS_EPS) / TENSOR_FEATURE_DIVISOR
  return jnp.clip(z, -TENSOR_FEATURE_CLIP, TENSOR_FEATURE_CLIP)
