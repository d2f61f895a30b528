"""Side-by-side runs of an optax learned optimizer and its ``learned_opt.torch`` counterpart.

Both sides get the same stream of gradients (and losses) and apply their own updates to their
own copy of the parameters; the runs record every step's updates and parameters so that the
tests can compare them step by step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

#: Parameter shapes of the side-by-side runs: a scalar, a vector, matrices and a 4-D tensor.
SHAPES = {"scalar": (), "bias": (5,), "matrix": (7, 3), "conv": (2, 3, 4, 5), "wide": (48, 64)}


def initial_params(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


def gradient_stream(num_steps: int, seed: int = 1, bad_step: int | None = None):
  """Gradients of varied scale per tensor and over time; ``bad_step`` adds nan and ±inf entries.

  Returns:
    ``(grads, losses)``: a list of ``{name: float32 array}`` and a float32 loss per step (some
    of them invalid: nan, negative, zero) for the loss features.
  """
  rng = np.random.default_rng(seed)
  scales = {k: 10.0 ** rng.uniform(-3, 1) for k in SHAPES}
  grads, losses = [], []
  for t in range(num_steps):
    drift = 1.0 + 0.5 * np.sin(t / 7.0)
    g = {k: (scales[k] * drift * rng.standard_normal(s)).astype(np.float32)
         for k, s in SHAPES.items()}
    if bad_step is not None and t == bad_step:
      g["matrix"][1, 2] = np.nan
      g["conv"][0, 1, 2, 3] = np.inf
      g["bias"][4] = -np.inf
    grads.append(g)
    losses.append(np.float32(2.0 * np.exp(-t / 40.0) * (1.0 + 0.1 * rng.standard_normal())))
  for t, bad in ((5, np.nan), (11, -1.0), (17, 0.0), (23, np.inf)):
    if t < num_steps:
      losses[t] = np.float32(bad)
  return grads, losses


def run_jax(tx: optax.GradientTransformation, params, grads, losses, dtype=jnp.float32):
  """Runs ``tx`` over the stream; returns per-step ``(updates, params)`` as numpy dicts."""
  params = {k: jnp.asarray(v, dtype) for k, v in params.items()}
  state = tx.init(params)

  @jax.jit
  def step(g, s, p, loss):
    u, s = tx.update(g, s, p, loss=loss)
    return u, s, optax.apply_updates(p, u)

  trace = []
  for g, loss in zip(grads, losses):
    g = {k: jnp.asarray(v, dtype) for k, v in g.items()}
    updates, state, params = step(g, state, params, loss)
    trace.append(({k: np.asarray(v.astype(jnp.float32)) for k, v in updates.items()},
                  {k: np.asarray(v.astype(jnp.float32)) for k, v in params.items()}))
  return trace


class StepRecorder:
  """Wraps a torch rule to record the step it returns for each parameter (before ``lr``)."""

  def __init__(self, rule):
    self.rule, self.steps = rule, {}

  def __getattr__(self, name):
    return getattr(self.rule, name)

  def update(self, grad, param, state, ctx):
    step = self.rule.update(grad, param, state, ctx)
    self.steps[id(param)] = step.clone()
    return step


def run_torch(make_optimizer, params, grads, losses, dtype=torch.float32, schedule=None):
  """Runs a ``learned_opt.torch`` optimizer over the stream; per-step ``(updates, params)``.

  Args:
    make_optimizer: ``tensors -> optimizer`` (param groups may be built from the tensors).
    schedule: optional ``optimizer -> lr_scheduler`` stepped after every step.
  """
  tensors = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in params.items()}
  opt = make_optimizer(tensors)
  recorder = StepRecorder(opt.rule)
  opt.rule = recorder
  sched = schedule(opt) if schedule else None
  lr_of = {id(p): g for g in opt.param_groups for p in g["params"]}
  trace = []
  for g, loss in zip(grads, losses):
    opt.zero_grad()
    for k, p in tensors.items():
      p.grad = torch.tensor(g[k], dtype=dtype)
    lrs = {k: lr_of[id(p)]["lr"] for k, p in tensors.items()}
    opt.step(loss=torch.tensor(loss))
    if sched:
      sched.step()
    updates = {}
    for k, p in tensors.items():
      u = recorder.steps[id(p)].to(dtype)
      updates[k] = (u if lrs[k] == 1.0 else u * lrs[k]).float().numpy()
    trace.append((updates, {k: p.detach().float().numpy().copy() for k, p in tensors.items()}))
  opt.rule = recorder.rule
  return trace


def assert_traces_close(torch_trace, jax_trace, rtol=1e-5, atol_fraction=1e-6):
  """Every step's updates and params agree to ``rtol``; ``nan`` where the other has ``nan``.

  The absolute tolerance is ``atol_fraction`` times the tensor's largest update (or parameter)
  at that step, for entries where the update cancels to nearly zero.
  """
  assert len(torch_trace) == len(jax_trace)
  for t, ((tu, tp), (ju, jp)) in enumerate(zip(torch_trace, jax_trace)):
    for what, a, b in (("update", tu, ju), ("param", tp, jp)):
      for k in b:
        finite = np.isfinite(b[k])
        scale = float(np.max(np.abs(b[k][finite]), initial=0.0))
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol_fraction * scale,
                                   err_msg=f"step {t}, {what} of {k!r}")
