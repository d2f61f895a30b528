"""The update rule of :class:`learned_opt.MLPOptimizer` in PyTorch, built from a file's config.

Per parameter tensor, with the momenta ``m_k`` and second moments ``v_r`` updated first,
the rule reads the features ``x = [g, p, m_k, v_r, v_r^{-1/2}, m_k v_r^{-1/2}]``, each divided
by its RMS over the tensor, and the step features ``[tanh(t/τ - 1); ψ(t, T)]``, and a ReLU
network maps them to a direction ``d`` and a magnitude ``μ``:

.. math::
  u = d \\cdot \\exp(a\\, μ) \\cdot b \\cdot e^{s}

with ``e^s`` the multiplier of a composed learned schedule (a ``chain`` file whose parts are
``mlp`` and ``schedule``) and, when ``normalize_step`` sits between them, ``d exp(a μ)``
divided by its RMS over the tensor and ``b`` replaced by its ``λ``. See
:class:`learned_opt.MLPOptimizer` for every option; this module
applies each of them as the optax transform does (same folding of the normalisers and step
features into the first layer, same non-finite handling). Each parameter tensor is processed in
chunks of :data:`CHUNK` elements: the chunk's features are written into one ``(F + 1, chunk)``
buffer (a last row of ones carries the biases) and each layer of the network is one matrix
product, so no Python loop runs over elements and the buffers stay in cache.

References:
  Metz et al., 2020, arXiv 2009.11243 (Eq. 1). Metz et al., 2022, arXiv 2203.11860 (Sec. 3).
  Moudgil et al., *Celo*, 2025, arXiv 2501.12670 (the learned schedule).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from learned_opt.torch import config as config_lib
from learned_opt.torch import features as feats

# Constants of learned_opt.mlp that the update reads (the schedule's clip, the ε under the mean
# square of a normalised step).
from learned_opt.experimental.normalize import _EPS as _STEP_NORM_EPS
from learned_opt.schedule import LOG_CLIP as SCHEDULE_LOG_CLIP

#: Elements per chunk of a parameter tensor (speed only: any value gives the same function).
CHUNK = 1 << 14


class StepContext(NamedTuple):
  """What one step shares across parameter tensors (on the tensors' device)."""

  theta: dict[str, torch.Tensor]
  bias0: torch.Tensor              # b₀ + W₀ᵀ[φ(t); ψ(t, T)]
  multiplier: torch.Tensor | None  # e^s of the learned schedule
  cosine: torch.Tensor | None = None  # e^β f(t; T) of the fixed cosine decay


class MLPRule:
  """The ``"mlp"`` architecture's update rule on torch tensors.

  Args:
    path: the file (for messages).
    config: the file's config dict.
    meta_params: the file's meta-parameters (nested dicts of numpy arrays).

  Raises:
    FileFormatError: for a config option this rule cannot apply, or tensors that do not fit
      the config.
  """

  name = "mlp"

  def __init__(self, path: str, config: dict[str, Any], meta_params: Any, *,
               schedule: dict[str, Any] | None = None, normalize_lr: float | None = None,
               pieces: tuple[Any, ...] = (), cosine: Any = None):
    cfg = config_lib.ConfigReader(path, self.name, config)
    self.hidden_sizes = cfg.int_list("hidden_sizes")
    self.momentum_decays = cfg.number_list("momentum_decays")
    self.rms_decays = cfg.number_list("rms_decays")
    self.time_scales = cfg.number_list("time_scales")
    self.exp_mult = cfg.number("exp_mult")
    self.step_mult = cfg.number("step_mult")
    self.norm_eps = cfg.number("norm_eps")
    self.rsqrt_eps = cfg.number("rsqrt_eps")
    tensor = cfg.take_dict("tensor", None)
    self.tensor_features = tensor is not None
    tensor = dict(tensor or {})
    self.tensor_grad_feature = bool(tensor.pop("grad", True))
    self.tensor_features_initial = bool(tensor.pop("held", False))
    if tensor:
      raise cfg.fail(f"unsupported config option(s) {sorted('tensor.' + k for k in tensor)}")
    cfg.ignore("horizon_aware")  # read by the optimizer, not by the update
    # Pieces composed after the rule (learned_opt.chain), given by load_rule.
    self.schedule_hidden_size = int(schedule["hidden_size"]) if schedule else 0
    self.schedule_loss_decays = tuple(schedule["loss_decays"]) if schedule else ()
    self.schedule_normalize = normalize_lr is not None
    self.init_learning_rate = normalize_lr  # the RMS of a normalised step
    self.pieces = tuple(pieces)  # per-tensor pieces between the rule and the schedule
    self.cosine = cosine  # the fixed cosine decay after the schedule (pieces.CosineDecayFactor)
    cfg.finish()
    if not self.momentum_decays or not self.rms_decays:
      raise cfg.fail("learned_opt.torch needs at least one momentum and one rms decay, got "
                     f"{list(self.momentum_decays)} and {list(self.rms_decays)}")
    self.theta = config_lib.meta_tensors(cfg, meta_params, self.expected_shapes())
    self._on_device: dict[torch.device, dict[str, torch.Tensor]] = {}
    self._buffers: dict[torch.device, dict[str, torch.Tensor]] = {}

  # -- shapes ---------------------------------------------------------------------------------

  @property
  def num_features(self) -> int:
    """``F = 2 + K + 2R + K·R`` per-parameter features."""
    k, r = len(self.momentum_decays), len(self.rms_decays)
    return 2 + k + 2 * r + k * r

  def tensor_index(self) -> list[int]:
    """Which features' mean squares the per-tensor features read (grad, param, ratios)."""
    k, r, f = len(self.momentum_decays), len(self.rms_decays), self.num_features
    return [*([0] if self.tensor_grad_feature else []), 1, *range(f - k * r, f)]

  def expected_shapes(self) -> dict[str, tuple[int, ...]]:
    """The meta-parameter shapes the config implies."""
    n_shared = len(self.time_scales) + feats.NUM_HORIZON_FEATURES
    sizes = [self.num_features + n_shared, *self.hidden_sizes, 2]
    shapes = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
      shapes[f"w{i}"], shapes[f"b{i}"] = (fan_in, fan_out), (fan_out,)
    if self.schedule_hidden_size:
      h, n_in = self.schedule_hidden_size, n_shared + len(self.schedule_loss_decays) + 1
      shapes.update(sched_w0=(n_in, h), sched_b0=(h,), sched_w1=(h, 1), sched_b1=(1,))
    if self.tensor_features:
      shapes["wt"] = (len(self.tensor_index()), sizes[1])
    return shapes

  # -- state ----------------------------------------------------------------------------------

  def init_state(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-parameter state: the momenta ``(K, *shape)`` and second moments ``(R, *shape)``."""
    def zeros(n):
      return torch.zeros((n, *param.shape), dtype=torch.float32, device=param.device)
    state = {"mom": zeros(len(self.momentum_decays)), "rms": zeros(len(self.rms_decays))}
    for piece in self.pieces:  # e.g. ParamScale(at_init=True)'s scale of the first parameters
      state.update(piece.init_state(param))
    return state

  def init_global(self, device: torch.device) -> dict[str, torch.Tensor]:
    """State shared by all parameters: the learned schedule's loss statistics (if any)."""
    if not self.schedule_hidden_size:
      return {}
    return {"loss_emas": torch.zeros((len(self.schedule_loss_decays),), dtype=torch.float32,
                                     device=device),
            "loss_count": torch.zeros((), dtype=torch.int32, device=device),
            "initial_loss": torch.zeros((), dtype=torch.float32, device=device)}

  def _theta(self, device: torch.device) -> dict[str, torch.Tensor]:
    if device not in self._on_device:
      theta = {k: v.to(device) for k, v in self.theta.items()}
      for name, values in (("mom", self.momentum_decays), ("rms", self.rms_decays)):
        beta, one_minus = feats.decays(values, device)
        theta[f"{name}_beta"], theta[f"{name}_one_minus"] = beta[:, None], one_minus[:, None]
      theta["time_scales"] = torch.tensor(self.time_scales, dtype=torch.float32, device=device)
      theta["loss_betas"] = torch.tensor(self.schedule_loss_decays, dtype=torch.float32,
                                         device=device)
      self._on_device[device] = theta
    return self._on_device[device]

  # -- one step -------------------------------------------------------------------------------

  def begin_step(self, step: int, num_steps: int | None, loss: torch.Tensor | None,
                 global_state: dict[str, torch.Tensor], device: torch.device) -> StepContext:
    """The step's shared quantities; updates ``global_state``'s loss statistics in place.

    Args:
      step: updates applied so far, ``t``.
      num_steps: the run's length ``T`` or None.
      loss: the step's loss (float32 scalar tensor) or None.
      global_state: :meth:`init_global`'s dict.
      device: where the parameters are.
    """
    theta = self._theta(device)
    t = torch.tensor(float(step), dtype=torch.float32, device=device)
    shared = torch.cat([feats.tanh_time_features(t, theta["time_scales"]),
                        feats.horizon_features(t, num_steps)])
    w0 = theta["w0"]
    bias0 = theta["b0"] + shared @ w0[self.num_features:]
    multiplier = None
    if self.schedule_hidden_size:
      loss_feats, emas, count, initial = feats.loss_features(
          loss, global_state["loss_emas"], global_state["loss_count"],
          global_state["initial_loss"], theta["loss_betas"])
      global_state.update(loss_emas=emas, loss_count=count, initial_loss=initial)
      x = torch.cat([shared, loss_feats])
      h = torch.relu(x @ theta["sched_w0"] + theta["sched_b0"])
      s = (h @ theta["sched_w1"])[0] + theta["sched_b1"][0]
      multiplier = torch.exp(torch.clamp(s, -SCHEDULE_LOG_CLIP, SCHEDULE_LOG_CLIP))
    cosine = None if self.cosine is None else self.cosine.factor(step, num_steps, device)
    return StepContext(theta=theta, bias0=bias0, multiplier=multiplier, cosine=cosine)

  def _features(self, g, p, mom, rms, x) -> None:
    """Writes the features ``[g, p, m_k, v_r, v_r^-1/2, m_k v_r^-1/2]`` of a chunk into ``x``.

    The ratios are ordered ``r`` outer, ``k`` inner, as :meth:`learned_opt.MLPOptimizer.features`.
    """
    n_mom, n_rms = mom.shape[0], rms.shape[0]
    x[0].copy_(g)
    x[1].copy_(p)
    o = 2 + n_mom + n_rms
    x[2:2 + n_mom].copy_(mom)
    x[2 + n_mom:o].copy_(rms)
    rs = x[o:o + n_rms]
    torch.add(rms, self.rsqrt_eps, out=rs).reciprocal_().sqrt_()
    torch.mul(mom[None], rs[:, None], out=x[o + n_rms:].view(n_rms, n_mom, -1))

  def _workspace(self, device: torch.device, size: int) -> dict[str, torch.Tensor]:
    """Contiguous ``(rows, size)`` buffers for a chunk of ``size <= CHUNK`` elements.

    Their memory is kept between steps (fresh large temporaries cost page faults). The
    network's inputs ``x`` and hidden layers ``h{i}`` end with a row of ones, so that each
    layer, its bias a last column of its weights, is one matrix product.
    """
    rows = {"x": self.num_features + 1, "squares": self.num_features,
            "tmp": 1,
            **{f"h{i}": h + 1 for i, h in enumerate(self.hidden_sizes)}, "out": 2}
    if device not in self._buffers:
      self._buffers[device] = {k: torch.empty((r * CHUNK,), dtype=torch.float32, device=device)
                               for k, r in rows.items()}
    ws = {k: self._buffers[device][k][:r * size].view(r, size) for k, r in rows.items()}
    for k, v in ws.items():
      if k == "x" or k.startswith("h"):
        v[-1] = 1.0
    return ws

  def update(self, grad: torch.Tensor, param: torch.Tensor, state: dict[str, torch.Tensor],
             ctx: StepContext) -> torch.Tensor:
    """The float32 step of one parameter tensor (to add); updates ``state`` in place.

    Two passes over the tensor in chunks of :data:`CHUNK` elements (so that the ``(F, chunk)``
    features and ``(H, chunk)`` activations stay in cache): the first updates the statistics
    and sums the features' squares (the per-tensor normalisers), the second rebuilds each
    chunk's features and applies the network. A non-finite gradient or state entry gives a
    ``nan`` step at that entry only (non-finite squares count as zero in the normalisers,
    non-finite features as zero in the network's inputs).
    """
    theta, n = ctx.theta, param.numel()
    n_feat, n_mom, n_rms = self.num_features, len(self.momentum_decays), len(self.rms_decays)
    g = grad.reshape(n).to(torch.float32)
    p = param.detach().reshape(n).to(torch.float32)
    mom, rms = state["mom"].view(n_mom, n), state["rms"].view(n_rms, n)
    chunks = [(a, min(a + CHUNK, n)) for a in range(0, n, CHUNK)]
    on_cpu = param.device.type == "cpu"
    sums = torch.zeros((n_feat,), dtype=torch.float32, device=param.device)

    def add_squares(x, sq, clean):
      torch.mul(x, x, out=sq)
      if clean:  # non-finite squares count as zero
        sq.masked_fill_(~(sq < float("inf")), 0.0)
      sums.add_(sq.sum(dim=1))

    clean = not on_cpu  # off the CPU, mask always (no host-synchronising test)
    for a, b in chunks:
      ws = self._workspace(param.device, b - a)
      gc, mc, vc = g[a:b], mom[:, a:b], rms[:, a:b]
      mc.mul_(theta["mom_beta"]).addcmul_(theta["mom_one_minus"], gc)
      vc.mul_(theta["rms_beta"]).addcmul_(theta["rms_one_minus"],
                                          torch.mul(gc, gc, out=ws["tmp"][0]))
      self._features(gc, p[a:b], mc, vc, ws["x"][:n_feat])
      add_squares(ws["x"][:n_feat], ws["squares"], clean)
    if not clean and not bool(torch.isfinite(sums).all()):
      clean = True  # a non-finite feature (rare): sum again, masked
      sums.zero_()
      for a, b in chunks:
        ws = self._workspace(param.device, b - a)
        self._features(g[a:b], p[a:b], mom[:, a:b], rms[:, a:b], ws["x"][:n_feat])
        add_squares(ws["x"][:n_feat], ws["squares"], clean)
    mean_squares = sums / n
    scales = torch.rsqrt(mean_squares + self.norm_eps)
    w0 = theta["w0"]
    bias = ctx.bias0
    if self.tensor_features:
      z = feats.tensor_log_rms(mean_squares[self.tensor_index()])
      if self.tensor_features_initial:  # held from this parameter's first update
        z = state.setdefault("tensor_z", z)
      bias = bias + z @ theta["wt"]
    # Each layer's weights with its bias as a last column: (fan_out, fan_in + 1).
    layers = [torch.cat([(w0[:n_feat] * scales[:, None]).T, bias[:, None]], dim=1)]
    layers += [torch.cat([theta[f"w{i}"].T, theta[f"b{i}"][:, None]], dim=1)
               for i in range(1, len(self.hidden_sizes) + 1)]
    direction, magnitude = torch.empty((2, n), dtype=torch.float32, device=param.device)
    finite = torch.ones((n,), dtype=torch.bool, device=param.device) if clean else None
    for a, b in chunks:
      ws = self._workspace(param.device, b - a)
      x = ws["x"][:n_feat]
      if len(chunks) > 1:  # one chunk: x still holds its features
        self._features(g[a:b], p[a:b], mom[:, a:b], rms[:, a:b], x)
      if clean:
        finite[a:b] = torch.isfinite(x).all(dim=0)
        x.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
      h = ws["x"]
      for i, w in enumerate(layers):
        if i < len(layers) - 1:
          torch.mm(w, h, out=ws[f"h{i}"][:-1]).relu_()
          h = ws[f"h{i}"]
        else:
          h = torch.mm(w, h, out=ws["out"])
      direction[a:b], magnitude[a:b] = h[0], h[1]
    # As the chain of pieces does: the rule's step (nan where its features are not finite),
    # then the per-tensor normalisation (nan entries count as zero), then the schedule.
    step = direction * torch.exp(self.exp_mult * magnitude)
    if not self.schedule_normalize:
      step = step * self.step_mult
    if finite is not None:
      step = torch.where(finite, step, float("nan"))
    if self.schedule_normalize:
      step = step * feats.inverse_rms(step, _STEP_NORM_EPS) * self.init_learning_rate
    step = step.view(param.shape)
    for piece in self.pieces:  # learned_opt.torch.pieces, in the chain's order
      step = piece(step, param, state)
    if ctx.multiplier is not None:
      step = step * ctx.multiplier
    if ctx.cosine is not None:
      step = step * ctx.cosine
    return step
