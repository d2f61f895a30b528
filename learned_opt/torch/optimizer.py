"""A learned optimizer file applied as a ``torch.optim.Optimizer``.

Meta-train in JAX, train anywhere: :class:`LearnedOptimizer` reads a file written by
:func:`learned_opt.save` (or a shipped pretrained optimizer) and applies the same update rule
as the optax transform ``lopt.transform(θ, learning_rate, num_steps=...)``, in torch tensors
only (no JAX call while training, nor to read the file).
"""

from __future__ import annotations

import copy
import numbers
import os
import warnings
from typing import Any, Callable, Iterable

import torch

from learned_opt.pretrained import NoHorizonWarning
from learned_opt.pretrained import _check_num_steps as check_num_steps
from learned_opt.torch import rules

# Key of the state shared by all parameters (step count, loss statistics) in ``self.state``.
_GLOBAL = "learned_opt"
# Names and paths already warned about (NoHorizonWarning: once per file and process).
_WARNED: set[str] = set()


class LearnedOptimizer(torch.optim.Optimizer):
  """A learned optimizer file as a PyTorch optimizer, numerically equal to its optax transform.

  .. math::
    p \\leftarrow p + η_{\\text{group}} \\cdot f_θ(\\text{features}_t,\\; ψ(t, T))

  with ``f_θ`` the file's learned step (its architecture's rule: :class:`learned_opt.MLPOptimizer`
  with every saved option, :class:`learned_opt.AdafactorMLPOptimizer`), ``η`` each param
  group's ``lr`` multiplier (``1.0``: the step as meta-trained; ``torch.optim.lr_scheduler``
  schedules it) and ``T`` = ``num_steps``. Updates follow ``optax`` step for step: the
  statistics are float32 whatever the parameter dtype (bf16/fp16 parameters get their update
  rounded to their dtype, then times ``lr``, as optax does), a non-finite gradient entry gives
  a ``nan`` update at that entry only, and the step count ``t`` is the number of
  :meth:`step` calls (one per optimizer, as the optax state's count).

  ``num_steps`` follows :func:`learned_opt.pretrained` for a shipped name: a horizon-aware
  optimizer (meta-trained seeing each run's length) should get it and warns once
  (:class:`learned_opt.NoHorizonWarning`) without; other shipped optimizers ignore it. For a
  path it is fed as given, as ``lopt.transform(θ, num_steps=...)`` does (the warning too, when
  the optimizer in the file is ``horizon_aware``).

  Parameters without a gradient are skipped (their statistics do not advance). With
  ``TensorFeatures(held=True)``, a tensor's held features are those of its first update, and
  with ``ParamScale(at_init=True)`` its scale is its RMS before its first update (the optax
  transform's ``init`` reads the same values when every tensor has a gradient from the first
  step). A
  ``chain`` file applies when it is optionally ``clip`` (over all the gradients of the step),
  then the MLP rule, optionally ``normalize_step``, then any of
  the per-tensor pieces ``orthogonalize`` and ``param_scale``, then optionally a ``schedule``,
  then optionally the fixed ``cosine_decay`` (it decays over ``num_steps``); other compositions
  are refused naming their parts.

  Args:
    params: an iterable of tensors or of param-group dicts (each may set its own ``lr``).
    optimizer: a name of :func:`learned_opt.list_pretrained` or a path to a file written by
      :func:`learned_opt.save`.
    num_steps: the number of updates (``step`` calls) of the run, a positive int, or None.
    lr: the default multiplier on the learned step (``>= 0``).

  Raises:
    ValueError: for an unknown name, a bad ``lr`` or ``num_steps``.
    FileFormatError: for a file learned_opt.torch cannot apply (naming what it does not support).

  Example::

    opt = LearnedOptimizer(model.parameters(), "default", num_steps=1000)  # was: Adam(..., 1e-3)
    for x, y in batches:
      opt.zero_grad()
      loss = loss_fn(model(x), y)
      loss.backward()
      opt.step(loss=loss)            # or opt.step(closure); the loss is optional

  References:
    Metz et al., 2022, arXiv 2203.11860; VeLO, arXiv 2211.09760 (given the run's length).
  """

  def __init__(self, params: Iterable[Any], optimizer: str | os.PathLike = "default",
               num_steps: int | None = None, lr: float = 1.0):
    if isinstance(lr, bool) or not isinstance(lr, (numbers.Real, torch.Tensor)) or not lr >= 0:
      raise ValueError(f"lr must be a number >= 0 (a multiplier on the learned step), got {lr!r}")
    check_num_steps(num_steps)
    loaded = rules.load_rule(optimizer)
    if loaded.pretrained_name is not None and not loaded.horizon_aware:
      num_steps = None  # never meta-trained with a horizon: its horizon weights are untrained
    elif loaded.horizon_aware and num_steps is None and loaded.path not in _WARNED:
      _WARNED.add(loaded.path)
      warnings.warn(
          f"learned_opt.torch.LearnedOptimizer({os.fspath(optimizer)!r}) was meta-trained "
          "horizon-aware but got no num_steps: its horizon features are zero, so it will not "
          "warm up or decay as it learned to. Pass num_steps=<number of step() calls of your "
          "run>.", NoHorizonWarning, stacklevel=2)
    super().__init__(params, {"lr": lr})
    self.rule = loaded.rule
    self.clip = loaded.clip  # a chain's gradient clip, applied to every gradient first
    self.path = loaded.path
    self.num_steps = num_steps

  def _global_state(self, device: torch.device) -> dict[str, Any]:
    if _GLOBAL not in self.state:
      self.state[_GLOBAL] = {"step": 0, **self.rule.init_global(device)}
    return self.state[_GLOBAL]

  @torch.no_grad()
  def step(self, closure: Callable[[], Any] | None = None, *, loss: Any = None):
    """Applies one learned update to every parameter that has a gradient.

    Args:
      closure: optional; re-evaluates the model and returns the loss (called with gradients
        enabled, before the update).
      loss: optional, the step's loss (a scalar tensor or float) when no closure gives it.
        Only a learned schedule reads it (as optax's ``update(..., loss=ℓ)``); without it the
        loss features are zero.

    Returns:
      The closure's loss, or None.
    """
    closure_loss = None
    if closure is not None:
      with torch.enable_grad():
        closure_loss = closure()
      if loss is None:
        loss = closure_loss
    work = []
    for group in self.param_groups:
      for p in group["params"]:
        if p.grad is None:
          continue
        if p.grad.is_sparse:
          raise ValueError("learned_opt.torch.LearnedOptimizer does not support sparse gradients")
        if not p.is_floating_point():
          raise ValueError(f"learned_opt.torch.LearnedOptimizer updates floating-point "
                           f"parameters only, got one of dtype {p.dtype}")
        work.append((group, p))
    devices = {p.device for _, p in work}
    if len(devices) > 1:
      raise ValueError(f"learned_opt.torch.LearnedOptimizer needs every parameter on one "
                       f"device, got {sorted(map(str, devices))}")
    device = devices.pop() if devices else torch.device("cpu")
    glob = dict(self._global_state(device))  # a new dict: state_dicts taken earlier keep theirs
    ctx = self.rule.begin_step(glob["step"], self.num_steps, _scalar(loss, device), glob, device)
    grads = [p.grad for _, p in work]
    if self.clip is not None:
      grads = self.clip.clip(grads)
    for (group, p), grad in zip(work, grads):
      state = self.state[p]
      if not state:
        state.update(self.rule.init_state(p))
      update = self.rule.update(grad, p, state, ctx).to(p.dtype)
      lr = group["lr"]
      if not (isinstance(lr, numbers.Real) and lr == 1.0):
        update = update * lr
      p.add_(update)
    glob["step"] += 1
    self.state[_GLOBAL] = glob
    return closure_loss

  def load_state_dict(self, state_dict: dict[str, Any]) -> None:
    """Loads :meth:`state_dict`'s output; the run then continues bit for bit.

    ``torch.optim.Optimizer.load_state_dict`` casts floating-point state to each parameter's
    dtype; here the statistics keep the dtype they were saved with (float32 for bf16/fp16
    parameters).
    """
    saved = state_dict["state"]
    super().load_state_dict(state_dict)
    params = [p for group in self.param_groups for p in group["params"]]
    for key, value in saved.items():
      if isinstance(key, int):
        p = params[key]
        self.state[p] = {k: v.to(device=p.device, copy=True) if torch.is_tensor(v) else v
                         for k, v in value.items()}
      else:
        self.state[key] = copy.deepcopy(value)


def _scalar(loss: Any, device: torch.device) -> torch.Tensor | None:
  """The loss as a float32 scalar tensor on ``device`` (no host synchronisation)."""
  if loss is None:
    return None
  value = torch.as_tensor(loss).detach()
  if value.ndim != 0:
    raise ValueError(f"the loss passed to the optimizer must be a scalar, got shape "
                     f"{tuple(value.shape)}")
  return value.to(device=device, dtype=torch.float32)
