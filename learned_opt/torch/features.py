"""The feature kernels of :mod:`learned_opt.features`, in PyTorch.

Each function computes, on torch tensors, what its namesake in :mod:`learned_opt.features`
computes on JAX arrays, in the same order of floating-point operations where that is cheap, so
that the PyTorch optimizer follows the optax transform to float32 rounding (the equality tests
in ``tests/learned_opt/test_torch.py`` hold them to ``rtol 1e-5`` over 100 steps). See that
module for the maths and the papers they follow.
"""

from __future__ import annotations

from typing import Sequence

import torch

from learned_opt import features as _jax_features

NORM_EPS = _jax_features.NORM_EPS
NUM_HORIZON_FEATURES = _jax_features.NUM_HORIZON_FEATURES
LOSS_FEATURE_CLIP = _jax_features.LOSS_FEATURE_CLIP
LOG_RMS_EPS = _jax_features.LOG_RMS_EPS
TENSOR_FEATURE_DIVISOR = _jax_features.TENSOR_FEATURE_DIVISOR
TENSOR_FEATURE_CLIP = _jax_features.TENSOR_FEATURE_CLIP


def finite_or_zero(x: torch.Tensor) -> torch.Tensor:
  """Replaces non-finite entries (``nan``, ``±inf``) of ``x`` by zero."""
  return torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))


def inverse_rms(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
  """``1 / sqrt(mean(x²) + ε)`` over the whole tensor, non-finite entries counting as zero."""
  x = finite_or_zero(x.to(torch.promote_types(x.dtype, torch.float32)))
  return torch.rsqrt(torch.mean(torch.square(x)) + eps)


def tanh_time_features(step: torch.Tensor, timescales: torch.Tensor) -> torch.Tensor:
  """``tanh(t / τ - 1)`` for each timescale ``τ`` (float32 ``step`` and ``timescales``)."""
  return torch.tanh(step / timescales - 1.0)


def horizon_features(step: torch.Tensor, num_steps: int | None) -> torch.Tensor:
  """``(t / T, log10(T) / 5)``, zeros if ``num_steps`` is None (``step`` a float32 scalar)."""
  if num_steps is None:
    return torch.zeros((NUM_HORIZON_FEATURES,), dtype=torch.float32, device=step.device)
  horizon = torch.clamp(torch.tensor(float(num_steps), dtype=torch.float32, device=step.device),
                        min=1.0)
  return torch.stack([step / horizon, torch.log10(horizon) / 5.0])


def loss_features(loss: torch.Tensor | None, emas: torch.Tensor, count: torch.Tensor,
                  initial: torch.Tensor, betas: torch.Tensor, clip: float = LOSS_FEATURE_CLIP):
  """The loss features ``clip(log(ℓ / ê_β), log(ℓ / ℓ₀))`` and the updated loss statistics.

  As :func:`learned_opt.features.loss_features`: a missing, non-finite or non-positive loss
  gives zero features and leaves the statistics unchanged. Computed without reading the loss
  on the host (no device synchronisation).

  Args:
    loss: the step's loss (a float32 scalar tensor) or ``None``.
    emas: the uncorrected averages (float32, one per decay).
    count: number of losses averaged so far (int32 scalar tensor).
    initial: the first loss (float32 scalar tensor).
    betas: the decays (float32 vector).
    clip: the bound ``c``.

  Returns:
    ``(features, new_emas, new_count, new_initial)``.
  """
  num = betas.shape[0] + 1
  if loss is None:
    return torch.zeros((num,), dtype=torch.float32, device=emas.device), emas, count, initial
  valid = torch.isfinite(loss) & (loss > 0)
  one = torch.ones((), dtype=torch.float32, device=loss.device)
  safe = torch.where(valid, loss, one)
  new_count = count + valid.to(count.dtype)
  new_emas = torch.where(valid, betas * emas + (1.0 - betas) * safe, emas)
  new_initial = torch.where(valid & (count == 0), safe, initial)
  correction = torch.where(valid, 1.0 - betas ** new_count.to(torch.float32), one)
  averages = torch.where(valid, new_emas / correction, one)
  denominators = torch.cat([averages, torch.where(valid, new_initial, one)[None]])
  features = torch.clamp(torch.log(safe) - torch.log(denominators), -clip, clip)
  return (torch.where(valid, features, torch.zeros_like(features)), new_emas, new_count,
          new_initial)


def tensor_log_rms(mean_squares: torch.Tensor) -> torch.Tensor:
  """Per-tensor scale features ``clip(log10 sqrt(mean(x²) + ε) / 3, -3, 3)``."""
  ms = finite_or_zero(mean_squares.to(torch.float32))
  z = 0.5 * torch.log10(ms + LOG_RMS_EPS) / TENSOR_FEATURE_DIVISOR
  return torch.clamp(z, -TENSOR_FEATURE_CLIP, TENSOR_FEATURE_CLIP)


def decays(values: Sequence[float], device=None) -> tuple[torch.Tensor, torch.Tensor]:
  """``(β, 1 - β)`` as float32 vectors, ``1 - β`` computed in double as JAX's weak types do."""
  beta = torch.tensor([float(b) for b in values], dtype=torch.float32, device=device)
  one_minus = torch.tensor([1.0 - float(b) for b in values], dtype=torch.float32, device=device)
  return beta, one_minus
