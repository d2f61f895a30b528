"""The update rule of :class:`learned_opt.AdafactorMLPOptimizer` in PyTorch.

Per tensor ``G`` (of a parameter ``P``), momenta ``M_k`` and, per factored decay, Adafactor's
row and column statistics of ``G²`` (Shazeer & Stern 2018, arXiv 1804.04235, Algorithm 4;
the full accumulator for tensors of rank < 2), the features
``[P, G, M_k, G V̂_j^{-1/2}, M_mid V̂_slow^{-1/2}]`` divided by their RMS over the tensor, and
time features ``tanh(t/τ - 1)``; one hidden ReLU layer gives ``(d, m)`` and

.. math::
  u = d \\cdot \\exp(a\\, m) \\cdot b

The decays are ``sigmoid`` of the file's logits. State and features are float32 (float64 for
float64 parameters), as in the optax transform.

References:
  Metz et al., 2022, arXiv 2203.11860 (``AdafacMLPLOpt``). Shazeer & Stern, 2018,
  arXiv 1804.04235.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from learned_opt.adafactor_mlp import _EPS_G2
from learned_opt.torch import config as config_lib
from learned_opt.torch import features as feats


class StepContext(NamedTuple):
  """What one step shares across parameter tensors."""

  theta: dict[str, torch.Tensor]
  hidden_bias: torch.Tensor  # b₁ + W₁ᵀ tanh(t/τ - 1)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
  return torch.promote_types(dtype, torch.float32)


def _ema(x, acc, beta, one_minus):
  return (beta * acc + one_minus * x).to(acc.dtype)


class AdafactorMLPRule:
  """The ``"adafactor_mlp"`` architecture's update rule on torch tensors.

  Args:
    path: the file (for messages).
    config: the file's config dict.
    meta_params: the file's meta-parameters (nested dicts of numpy arrays).
  """

  name = "adafactor_mlp"

  def __init__(self, path: str, config: dict[str, Any], meta_params: Any):
    cfg = config_lib.ConfigReader(path, self.name, config)
    self.hidden_size = cfg.integer("hidden_size")
    # The decays the optimizer starts from; the file's logits are what it applies.
    self.num_momenta = len(cfg.number_list("momentum_decays"))
    self.num_factored = len(cfg.number_list("factored_decays"))
    self.time_scales = cfg.number_list("time_scales")
    self.exp_mult = cfg.number("exp_mult")
    self.step_mult = cfg.number("step_mult")
    self.norm_eps = cfg.number("norm_eps")
    cfg.ignore("horizon_aware")  # read by the optimizer, not by the update
    cfg.finish()
    if not self.num_momenta or not self.num_factored or not self.hidden_size:
      raise cfg.fail("needs hidden_size >= 1 and at least one momentum and one factored decay")
    self.num_features = 2 + self.num_momenta + self.num_factored + 1
    h = self.hidden_size
    expected = {"mlp/w1": (self.num_features + len(self.time_scales), h), "mlp/b1": (h,),
                "mlp/w2": (h, 2), "mlp/b2": (2,), "momentum_logits": (self.num_momenta,),
                "factored_logits": (self.num_factored,)}
    self.theta = config_lib.meta_tensors(cfg, meta_params, expected)
    self._on_device: dict[torch.device, dict[str, torch.Tensor]] = {}

  def init_state(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
    """Momenta ``(K, *shape)``; row ``(J, *shape[:-1])`` and column ``(J, *shape[:-2],
    shape[-1])`` statistics for rank >= 2, the full ``(J, *shape)`` accumulator otherwise."""
    dt, shape, j = _acc_dtype(param.dtype), tuple(param.shape), self.num_factored
    zeros = lambda s: torch.zeros(s, dtype=dt, device=param.device)
    state = {"mu": zeros((self.num_momenta, *shape))}
    if len(shape) >= 2:
      state["row"] = zeros((j, *shape[:-1]))
      state["col"] = zeros((j, *shape[:-2], shape[-1]))
    else:
      state["row"] = zeros((j, *shape))
    return state

  def init_global(self, device: torch.device) -> dict[str, torch.Tensor]:
    del device
    return {}

  def _theta(self, device: torch.device) -> dict[str, torch.Tensor]:
    if device not in self._on_device:
      theta = {k: v.to(device) for k, v in self.theta.items()}
      for name in ("momentum", "factored"):
        logits = theta[f"{name}_logits"]
        # 1 - sigmoid(x) as sigmoid(-x): exact even when a decay rounds to 1.
        theta[f"{name}_beta"], theta[f"{name}_one_minus"] = (torch.sigmoid(logits),
                                                             torch.sigmoid(-logits))
      theta["time_scales"] = torch.tensor(self.time_scales, dtype=torch.float32, device=device)
      self._on_device[device] = theta
    return self._on_device[device]

  def begin_step(self, step: int, num_steps: int | None, loss: torch.Tensor | None,
                 global_state: dict[str, torch.Tensor], device: torch.device) -> StepContext:
    """The first-layer bias with the time features folded in (no horizon, no loss features)."""
    del num_steps, loss, global_state
    theta = self._theta(device)
    t = torch.tensor(float(step), dtype=torch.float32, device=device)
    time_feats = feats.tanh_time_features(t, theta["time_scales"])
    w1 = theta["mlp/w1"]
    return StepContext(theta=theta,
                       hidden_bias=theta["mlp/b1"] + time_feats @ w1[self.num_features:])

  def update(self, grad: torch.Tensor, param: torch.Tensor, state: dict[str, torch.Tensor],
             ctx: StepContext) -> torch.Tensor:
    """The step of one parameter tensor (to add; float32, float64 for float64 parameters)."""
    theta = ctx.theta
    dt = _acc_dtype(param.dtype)
    g, p = grad.to(dt), param.detach().to(dt)
    mus = state["mu"]
    for k in range(self.num_momenta):
      mus[k] = _ema(g, mus[k], theta["momentum_beta"][k], theta["momentum_one_minus"][k])
    g2 = feats.finite_or_zero(torch.square(g)) + _EPS_G2
    rsqrts = []
    for j in range(self.num_factored):
      beta, one_minus = theta["factored_beta"][j], theta["factored_one_minus"][j]
      row = state["row"]
      if g.ndim >= 2:
        col = state["col"]
        row[j] = _ema(g2.mean(dim=-1), row[j], beta, one_minus)
        col[j] = _ema(g2.mean(dim=-2), col[j], beta, one_minus)
        denom = torch.clamp(row[j].mean(dim=-1, keepdim=True), min=_EPS_G2)
        row_factor = torch.rsqrt(torch.clamp(row[j] / denom, min=_EPS_G2))
        col_factor = torch.rsqrt(torch.clamp(col[j], min=_EPS_G2))
        rsqrts.append(row_factor[..., :, None] * col_factor[..., None, :])
      else:
        row[j] = _ema(g2, row[j], beta, one_minus)
        rsqrts.append(torch.rsqrt(torch.clamp(row[j], min=_EPS_G2)))
    n = param.numel()
    x = torch.stack([f.expand(param.shape).reshape(n) for f in
                     (p, g, *mus, *(g * r for r in rsqrts),
                      mus[min(1, self.num_momenta - 1)] * rsqrts[-1])])  # (F, n)
    sums = (x * x).sum(dim=1)
    # Every square finite means every feature is (see MLPRule.update); otherwise non-finite
    # entries count as zero in the normalisers and the network, and their step is nan.
    finite = None
    if not (x.device.type == "cpu" and bool(torch.isfinite(sums).all())):
      finite_x = torch.isfinite(x)
      sums = torch.where(finite_x, x, 0.0).square().sum(dim=1)
      finite = finite_x.all(dim=0)
      x = torch.where(finite[None], x, 0.0)
    norm = torch.rsqrt(sums / n + self.norm_eps)
    w1, w2, b2 = (theta[k].to(dt) for k in ("mlp/w1", "mlp/w2", "mlp/b2"))
    w_eff = norm[:, None] * w1[:self.num_features]
    hid = torch.addmm(ctx.hidden_bias.to(dt)[:, None], w_eff.T, x).relu_()
    direction, magnitude = torch.addmm(b2[:, None], w2.T, hid)
    step = direction * torch.exp(self.exp_mult * magnitude) * self.step_mult
    if finite is not None:
      step = torch.where(finite, step, float("nan"))
    return step.view(param.shape)
