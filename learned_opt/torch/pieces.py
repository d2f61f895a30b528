"""The pieces a chain composes around the rule, in PyTorch.

:class:`GradientClip` applies :class:`learned_opt.ClipGradients` in front of the rule, to all
of a step's gradients at once; the others act after it, per tensor or per step.

:class:`OrthogonalizePiece` applies :class:`learned_opt.Orthogonalize` and
:class:`ParamScalePiece` :class:`learned_opt.ParamScale` to one parameter tensor's float32
step, as the optax transforms do (the same Newton–Schulz iteration, RMS matching, floor and
non-finite handling). Each is built from its part's config and meta-parameters in a file, and
is called as ``piece(step, param, state)`` with the parameter's optimizer state, to which
:meth:`init_state` (called at the parameter's first step, before its update) adds the piece's
own entries.
"""

from __future__ import annotations

from typing import Any

import torch

from learned_opt.orthogonalize import NS_COEFFS
from learned_opt.orthogonalize import as_matrix_shape
from learned_opt.orthogonalize import _EPS as _ORTH_EPS
from learned_opt.torch import config as config_lib
from learned_opt.torch import features as feats


def newton_schulz(x: torch.Tensor, steps: int) -> torch.Tensor:
  """:func:`learned_opt.orthogonalize.newton_schulz` on a float32 or float64 matrix."""
  a, b, c = NS_COEFFS
  tall = x.shape[0] > x.shape[1]
  y = x.T if tall else x
  y = y / (torch.sqrt(torch.sum(y * y)) + _ORTH_EPS)
  for _ in range(steps):
    g = y @ y.T
    y = a * y + (b * g + c * g @ g) @ y
  return y.T if tall else y


def matrix_shape(shape: tuple[int, ...], kernels: bool) -> tuple[int, int] | None:
  """The matrix :class:`OrthogonalizePiece` orthogonalises a step of ``shape`` as, or ``None``.

  PyTorch's layout puts a conv weight's output first, ``(out, in, kh, kw)``: with ``kernels``
  it is the ``(out, fan-in)`` matrix (Muon's PyTorch convention), the transpose of the one
  :func:`learned_opt.orthogonalize.as_matrix_shape` takes from flax's ``(kh, kw, in, out)``,
  with the fan-in's entries in another order: the same orthogonalisation (Newton–Schulz
  commutes with transposes and permutations of rows and columns).
  """
  flax_like = as_matrix_shape(tuple(reversed(shape)), kernels)  # output axis last
  return None if flax_like is None else flax_like[::-1]


class OrthogonalizePiece:
  """``learned_opt.Orthogonalize``: ``e^β((1 - σ(α)) u + σ(α) o)`` on each weight matrix."""

  name = "orthogonalize"

  def __init__(self, path: str, config: dict[str, Any], meta_params: Any):
    cfg = config_lib.ConfigReader(path, self.name, config)
    self.steps = cfg.integer("steps")
    self.kernels = cfg.flag("kernels", False)  # files written before the option: False
    cfg.ignore("initial_mix", "horizon_aware")  # the start's, and read off the rule
    cfg.finish()
    theta = config_lib.meta_tensors(cfg, meta_params, {"mix": (), "log_scale": ()})
    self.mix = torch.sigmoid(theta["mix"])  # float32 scalars, as the optax transform's
    self.scale = torch.exp(theta["log_scale"])

  def init_state(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
    del param
    return {}

  def __call__(self, step: torch.Tensor, param: torch.Tensor,
               state: dict[str, torch.Tensor]) -> torch.Tensor:
    del state
    shape = matrix_shape(tuple(step.shape), self.kernels)
    if shape is None:
      return step
    finite = torch.isfinite(step)
    clean = torch.where(finite, step, torch.zeros_like(step))
    o = newton_schulz(clean.reshape(shape), self.steps).reshape(step.shape)
    o = o * (feats.inverse_rms(o, _ORTH_EPS) / feats.inverse_rms(clean, _ORTH_EPS))
    mix, scale = self.mix.to(step.device), self.scale.to(step.device)
    out = scale * ((1.0 - mix) * clean + mix * o)
    return torch.where(finite, out, step)


class ParamScalePiece:
  """``learned_opt.ParamScale``: each tensor's step times ``max(rms(p), floor) e^β``, with
  ``rms(p)`` the current parameter's, or with ``at_init`` the one at the parameter's first step
  (held in its state as ``param_scale``, as the optax state holds it from ``init``); with
  ``kernels`` false a tensor of 3 or more axes keeps its step (in either layout)."""

  name = "param_scale"

  def __init__(self, path: str, config: dict[str, Any], meta_params: Any):
    cfg = config_lib.ConfigReader(path, self.name, config)
    self.floor = cfg.number("floor")
    self.at_init = cfg.flag("at_init", False)  # files written before the option: False
    self.kernels = cfg.flag("kernels", True)  # files written before the option: True
    cfg.ignore("reference_rms", "horizon_aware")  # the start's, and read off the rule
    cfg.finish()
    theta = config_lib.meta_tensors(cfg, meta_params, {"log_scale": ()})
    self.factor = torch.exp(theta["log_scale"])  # a float32 scalar, as the optax transform's

  def _scale(self, param: torch.Tensor) -> torch.Tensor:
    p = feats.finite_or_zero(param.detach().to(torch.promote_types(param.dtype, torch.float32)))
    return torch.sqrt(torch.clamp(torch.mean(p * p), min=self.floor ** 2))

  def init_state(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"param_scale": self._scale(param)} if self.at_init else {}

  def __call__(self, step: torch.Tensor, param: torch.Tensor,
               state: dict[str, torch.Tensor]) -> torch.Tensor:
    if not self.kernels and param.dim() >= 3:
      return step
    scale = state["param_scale"] if self.at_init else self._scale(param)
    return step * (scale * self.factor.to(step.device))


class CosineDecayFactor:
  """``learned_opt.CosineDecay``: every step times ``e^β f(t; T)``, one factor per step (applied
  last, after the rule, its pieces and a learned schedule)."""

  name = "cosine_decay"

  def __init__(self, path: str, config: dict[str, Any], meta_params: Any):
    cfg = config_lib.ConfigReader(path, self.name, config)
    self.warmup_fraction = cfg.number("warmup_fraction")
    self.final_fraction = cfg.number("final_fraction")
    cfg.finish()
    theta = config_lib.meta_tensors(cfg, meta_params, {"log_scale": ()})
    self.scale = torch.exp(theta["log_scale"])  # a float32 scalar, as the optax transform's

  def factor(self, step: int, num_steps: int | None, device: torch.device) -> torch.Tensor:
    """The float32 multiplier of update ``step``, in the operations of
    :func:`learned_opt.cosine_decay.cosine_factor`."""
    f32 = dict(dtype=torch.float32, device=device)
    if num_steps is None:  # no length, no schedule (T = ∞), as the optax part
      return self.scale.to(device)
    t = torch.tensor(float(step), **f32)
    n = torch.clamp(torch.tensor(float(num_steps), **f32), min=1.0)
    w, phi = self.warmup_fraction, self.final_fraction
    warmup = torch.ceil(torch.tensor(w, **f32) * n) if w > 0 else torch.zeros((), **f32)
    ramp = (t + 1.0) / torch.clamp(warmup, min=1.0)
    frac = torch.clamp((t - warmup) / torch.clamp(n - warmup, min=1.0), 0.0, 1.0)
    cosine = phi + (1.0 - phi) * torch.square(torch.cos(0.5 * torch.pi * frac))
    return self.scale.to(device) * torch.where(t < warmup, ramp, cosine)


class GradientClip:
  """``learned_opt.ClipGradients``: the gradients of one step scaled to a global norm of at
  most ``e^β · max_norm`` before the rule reads them (applied first, over every parameter)."""

  name = "clip"

  def __init__(self, path: str, config: dict[str, Any], meta_params: Any):
    cfg = config_lib.ConfigReader(path, self.name, config)
    self.max_norm = cfg.number("max_norm")
    cfg.finish()
    theta = config_lib.meta_tensors(cfg, meta_params, {"log_max_norm": ()})
    # A float32 scalar, as the optax transform's e^β · max_norm.
    self.limit = torch.exp(theta["log_max_norm"]) * self.max_norm

  def clip(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """``grads`` scaled by one factor, as :class:`learned_opt.ClipGradients` scales a tree: the
    float32 norm over the finite entries, non-finite entries left as they are."""
    if not grads:
      return grads
    device = grads[0].device
    total = torch.zeros((), dtype=torch.float32, device=device)
    for g in grads:
      g = feats.finite_or_zero(g.to(torch.float32))
      total = total + torch.sum(g * g)
    norm = torch.sqrt(total)
    limit = self.limit.to(device)
    factor = torch.where(norm > limit, limit / torch.clamp(norm, min=1e-30),
                         torch.ones((), dtype=torch.float32, device=device))
    # In at least float32 (the rule reads them so), as the chain holds its updates.
    wide = [g.to(torch.promote_types(g.dtype, torch.float32)) for g in grads]
    return [torch.where(torch.isfinite(g), g * factor.to(g.dtype), g) for g in wide]


#: Part name -> torch piece class.
PIECES = {piece.name: piece for piece in (OrthogonalizePiece, ParamScalePiece)}
