"""learned_opt.torch: an optimizer file applied in PyTorch equals its optax transform.

The side-by-side runs give the optax transform and ``learned_opt.torch.LearnedOptimizer`` the
same stream of gradients (and losses), each applying its own updates to its own copy of the
parameters, and require every step's updates and parameters to agree to ``rtol 1e-5``
(float32), for every shipped optimizer file and for random meta-parameters of every option a
file can hold. They guard the torch rules against any change of the JAX ones (and back).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

import learned_opt

torch = pytest.importorskip(
    "torch", reason="learned_opt.torch needs PyTorch (pip install 'learned_opt[torch]')")

from learned_opt import mlp as jax_mlp  # noqa: E402
from learned_opt.experimental import NormalizeStep  # noqa: E402
from learned_opt import file_format  # noqa: E402
from learned_opt.cosine_decay import cosine_factor  # noqa: E402
from learned_opt.torch import LearnedOptimizer  # noqa: E402
from learned_opt.torch import mlp as torch_mlp  # noqa: E402
from learned_opt.torch import optimizer as torch_optimizer  # noqa: E402
from learned_opt.torch import rules as torch_rules  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():
  """Small tensors: torch's thread pool only adds synchronisation (and CI shares its cores)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


# ------------------------------------------------------------------------- side-by-side runs

#: Parameter shapes of the side-by-side runs: a scalar, a vector, matrices and a 4-D tensor.
# At most ~1,000 elements per tensor: the optax transform sums each feature's squares over the
# tensor in float32 in one sequential pass (learned_opt.features.tensor_means), whose relative
# error grows with the tensor (about 1e-6 at 3,000 elements, 4e-6 at 40,000, 5e-4 at 1M), and
# a feature far out in its tensor's tail carries that error into the update amplified by up to
# sqrt(n). The torch side sums pairwise (accurate to ~1e-8); at these sizes both agree to
# 1e-5. test_large_tensor_agrees_to_the_accuracy_of_the_optax_sums covers large tensors.
# The `default` once shipped, as format v1 wrote it (tests/learned_opt/fixtures).
V1_DEFAULT = os.path.join(os.path.dirname(__file__), "fixtures", "v1_default.safetensors")
SHAPES = {"scalar": (), "bias": (5,), "matrix": (7, 3), "conv": (2, 3, 4, 5), "wide": (24, 40)}


def initial_params(shapes=SHAPES, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def gradient_stream(num_steps: int, shapes=SHAPES, seed: int = 1, bad_step: int | None = None):
  """Gradients of varied scale per tensor and over time; ``bad_step`` adds nan and ±inf entries.

  Returns:
    ``(grads, losses)``: a list of ``{name: float32 array}`` and a float32 loss per step (four
    of them invalid: nan, negative, zero, inf) for the loss features.
  """
  rng = np.random.default_rng(seed)
  scales = {k: 10.0 ** rng.uniform(-3, 1) for k in shapes}
  grads, losses = [], []
  for t in range(num_steps):
    drift = 1.0 + 0.5 * np.sin(t / 7.0)
    g = {k: (scales[k] * drift * rng.standard_normal(s)).astype(np.float32)
         for k, s in shapes.items()}
    if bad_step is not None and t == bad_step:
      for k, value in zip(("matrix", "conv", "bias", "big"), (np.nan, np.inf, -np.inf, np.nan)):
        if k in g:
          g[k].reshape(-1)[-2] = value  # the last chunk of a chunked tensor
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


def assert_traces_close(torch_trace, jax_trace, rtol=1e-5, update_rtols=None):
  """Every step's updates and parameters agree to ``rtol``, ``nan`` exactly where JAX has one.

  Entry by entry, ``|a - b| <= rtol (|b| + s)`` with ``s`` the RMS of that step's updates (or
  parameters) over all tensors: a relative tolerance, and the same tolerance relative to the
  step's scale for entries that cancel to nearly zero (float32 rounding of the sums in the
  network's layers is of that order in both frameworks). ``update_rtols[t]``, when given, adds
  to the tolerance of step ``t``'s updates (see :func:`cosine_factor_rtols`).
  """
  assert len(torch_trace) == len(jax_trace)
  for t, ((tu, tp), (ju, jp)) in enumerate(zip(torch_trace, jax_trace)):
    for what, a, b in (("update", tu, ju), ("param", tp, jp)):
      tol = rtol + (update_rtols[t] if update_rtols is not None and what == "update" else 0.0)
      finite = np.concatenate([v[np.isfinite(v)].ravel() for v in b.values()])
      scale = float(np.sqrt(np.mean(np.square(finite.astype(np.float64)))))
      for k in b:
        np.testing.assert_allclose(a[k], b[k], rtol=tol, atol=tol * scale,
                                   err_msg=f"step {t}, {what} of {k!r}")


def cosine_factor_rtols(lopt, num_steps, length, ulps=2.0):
  """Per step, the float32 accuracy of a :class:`learned_opt.CosineDecay` factor in ``lopt``.

  ``f(x) = φ + (1 - φ) cos²(πx/2)`` of the run fraction ``x``, which each framework rounds to
  float32 in its own order (XLA's fused division differs from the step-by-step quotient by an
  ulp): a relative error ``δ`` in ``x`` moves ``f`` by ``κ δ``, with the condition number
  ``κ = x |f'(x)| / f(x) = x (1 - φ) (π/2) sin(πx) / f(x)``, which grows without bound as ``f``
  approaches 0 at the end of a run with ``φ = 0`` (κ ≈ 198 at the last of 100 steps without a
  warm-up). Returns ``ulps`` float32 ulps times ``κ`` for steps ``0 .. length - 1``; zeros
  without a decay or a horizon.
  """
  decays = [p for p in _parts(lopt) if isinstance(p, learned_opt.CosineDecay)]
  if not decays or num_steps is None:
    return np.zeros(length)
  (decay,) = decays
  phi, n = decay.final_fraction, float(num_steps)
  warmup = math.ceil(decay.warmup_fraction * n) if decay.warmup_fraction > 0 else 0
  x = np.clip((np.arange(length) - warmup) / max(n - warmup, 1.0), 0.0, 1.0)
  f = phi + (1 - phi) * np.cos(0.5 * np.pi * x) ** 2
  kappa = np.where(f > 0, x * (1 - phi) * 0.5 * np.pi * np.sin(np.pi * x) / np.maximum(f, 1e-300),
                   0.0)
  return ulps * float(np.finfo(np.float32).eps) * kappa


def test_cosine_factor_rtols_bound_the_float32_factor():
  eps = float(np.finfo(np.float32).eps)
  lopt = learned_opt.chain(_MLP(hidden_sizes=(8,)), learned_opt.CosineDecay())
  rtols = cosine_factor_rtols(lopt, 100, 100)
  # Hand-worked at the last step, x = 0.99: κ = 0.99 (π/2) sin(0.99π) / cos²(0.495π) ≈ 198.0.
  assert rtols[99] / (2 * eps) == pytest.approx(198.0, rel=1e-3)
  assert rtols[0] == 0.0 and np.all(np.diff(rtols) > 0)
  assert not cosine_factor_rtols(_MLP(), 100, 100).any()
  assert not cosine_factor_rtols(lopt, None, 100).any()
  # The bound covers XLA's own float32 factor against the float64 one, step by step.
  steps = jnp.arange(100)
  jitted = np.asarray(jax.jit(jax.vmap(lambda t: cosine_factor(t, 100, 0.0, 0.0)))(steps))
  exact = np.cos(0.5 * np.pi * np.arange(100) / 100) ** 2
  assert np.all(np.abs(jitted / exact - 1) <= rtols + 2 * eps)


def _perturbed(theta, seed: int, std: float = 0.1):
  """``theta`` plus Gaussian noise on every tensor, so that zero-initialised parts (the learned
  schedule's output layer, the Adam start's unused units) are exercised too."""
  leaves, treedef = jax.tree.flatten(theta)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [x + std * jax.random.normal(k, x.shape, x.dtype)
                                      for x, k in zip(leaves, keys)])


# Random architectures: (optimizer, num_steps, lr). Together they set every config option of
# both architectures to a value other than its default (test_archs_cover_every_option).
_MLP = learned_opt.MLPOptimizer
_TF = learned_opt.TensorFeatures
ARCHS = {
    "mlp_default": (_MLP(), None, 1.0),
    "mlp_adam_start_horizon": (_MLP(exp_mult=1.0, horizon_aware=True), 100, 1.0),
    "mlp_fused_one_layer": (_MLP(hidden_sizes=(8,)), 100, 0.5),
    "mlp_deep_features": (_MLP(
        hidden_sizes=(8, 6, 5), momentum_decays=(0.0, 0.9), rms_decays=(0.9, 0.999),
        time_scales=(1.0, 10.0, 100.0), norm_eps=1e-4, rsqrt_eps=1e-6, step_mult=1e-2), 250,
        1.0),
    "mlp_schedule": (learned_opt.chain(_MLP(hidden_sizes=(8, 8)), learned_opt.LearnedSchedule(
        hidden_size=4, loss_decays=(0.5, 0.9))), 100, 1.0),
    "mlp_schedule_normalize": (learned_opt.chain(
        _MLP(step_mult=1.0), NormalizeStep(), learned_opt.LearnedSchedule(hidden_size=3)),
        100, 1.0),
    "mlp_tensor_features": (_MLP(tensor=_TF()), 100, 1.0),
    "mlp_tensor_features_held": (_MLP(tensor=_TF(grad=False, held=True)), None, 2.0),
    "mlp_everything": (learned_opt.chain(
        _MLP(hidden_sizes=(6, 5), rms_decays=(0.95, 0.99), tensor=_TF(held=True), step_mult=1.0),
        NormalizeStep(learning_rate=1e-2), learned_opt.LearnedSchedule(hidden_size=5)), 100, 0.7),
    "mlp_harness_param_scale_schedule": (learned_opt.chain(
        _MLP(hidden_sizes=(8, 8), horizon_aware=True), learned_opt.Orthogonalize(steps=4),
        learned_opt.ParamScale(floor=0.05), learned_opt.LearnedSchedule(hidden_size=4)),
        100, 1.0),
    # The scale read once, from the first parameters, and held (the stream's parameters grow).
    "mlp_harness_param_scale_at_init_cosine": (learned_opt.chain(
        _MLP(hidden_sizes=(8, 8)), learned_opt.Orthogonalize(),
        learned_opt.ParamScale(reference_rms=0.3, floor=0.3, at_init=True),
        learned_opt.CosineDecay(final_fraction=0.1)), 100, 1.0),
    "mlp_harness": (learned_opt.chain(_MLP(hidden_sizes=(8, 8)), learned_opt.Orthogonalize()),
                    None, 0.5),
    # The gradient clip in front (the stream's global norms run 29-119: about half the steps
    # are clipped, and step 40's non-finite entries must stay out of the norm).
    "clip_mlp_harness_param_scale_at_init_cosine": (learned_opt.chain(
        learned_opt.ClipGradients(max_norm=60.0), _MLP(hidden_sizes=(8, 8)),
        learned_opt.Orthogonalize(), learned_opt.ParamScale(reference_rms=0.3, floor=0.3,
                                                            at_init=True),
        learned_opt.CosineDecay(final_fraction=0.05)), 100, 1.0),
    "mlp_harness_kernels": (learned_opt.chain(
        _MLP(hidden_sizes=(8, 8)), learned_opt.Orthogonalize(kernels=True)), 100, 1.0),
    # The held scale on every tensor but the conv kernel (its step stays the rule's).
    "clip_mlp_harness_param_scale_dense": (learned_opt.chain(
        learned_opt.ClipGradients(max_norm=60.0), _MLP(hidden_sizes=(8, 8)),
        learned_opt.Orthogonalize(), learned_opt.ParamScale(reference_rms=0.3, floor=0.3,
                                                            at_init=True, kernels=False),
        learned_opt.CosineDecay(final_fraction=0.2)), 100, 1.0),
    # The fixed cosine decay last, after a schedule; alone after the rule with a horizon
    # shorter than the stream (its factor is φ = 0 after step T).
    "mlp_harness_schedule_cosine": (learned_opt.chain(
        _MLP(hidden_sizes=(8, 8), horizon_aware=True), learned_opt.Orthogonalize(),
        learned_opt.LearnedSchedule(hidden_size=4),
        learned_opt.CosineDecay(warmup_fraction=0.1, final_fraction=0.05)), 100, 1.0),
    "mlp_cosine": (learned_opt.chain(_MLP(hidden_sizes=(8,)), learned_opt.CosineDecay()), 60,
                   0.5),
    "mlp_cosine_no_horizon": (learned_opt.chain(_MLP(hidden_sizes=(8,)), learned_opt.CosineDecay(
        final_fraction=0.3)), None, 1.0),
    "adafactor_default": (learned_opt.AdafactorMLPOptimizer(), None, 1.0),
    "adafactor_small": (learned_opt.AdafactorMLPOptimizer(
        hidden_size=8, momentum_decays=(0.9,), factored_decays=(0.99,), time_scales=(1.0, 30.0),
        exp_mult=0.1, step_mult=1e-2, norm_eps=1e-3, horizon_aware=True), 100, 1.0),
}
# Starts other than init (learned_opt.inits.adam_like's arguments), and FUSE_MIN_SIZE values
# that put some tensors of the stream through the fused network.
STARTS = {"mlp_adam_start_horizon": dict(learning_rate=1e-2, decay=3.0), "mlp_cosine": {},
          "mlp_cosine_no_horizon": {},
          "mlp_harness_param_scale_schedule": dict(decay=3.0), "mlp_harness": {},
          "mlp_harness_param_scale_at_init_cosine": {},
          "clip_mlp_harness_param_scale_at_init_cosine": {},
          "clip_mlp_harness_param_scale_dense": {},
          "mlp_schedule_normalize": dict(decay=2.0), "mlp_everything": dict(decay=1.0)}
FUSE = {"mlp_fused_one_layer": 16, "mlp_everything": 100}
# Tensors given to torch in its own layout where the update depends on it: the stream's "conv"
# is a flax kernel (kh, kw, in, out); torch holds a conv weight as (out, in, kh, kw).
TORCH_LAYOUTS = {"mlp_harness_kernels": {"conv": (3, 2, 0, 1)},
                 "clip_mlp_harness_param_scale_dense": {"conv": (3, 2, 0, 1)}}


def _to_layout(arrays: dict[str, np.ndarray], perms, inverse: bool = False):
  """``arrays`` with each named tensor's axes permuted (``inverse``: back)."""
  return {k: np.transpose(v, np.argsort(perms[k]) if inverse else perms[k]) if k in perms else v
          for k, v in arrays.items()}


def _parts(lopt):
  return lopt.parts if isinstance(lopt, learned_opt.Chain) else (lopt,)


def test_archs_cover_every_option():
  """Every saved config option of each piece takes a non-default value in ARCHS."""
  for cls in (learned_opt.MLPOptimizer, learned_opt.AdafactorMLPOptimizer,
              learned_opt.LearnedSchedule, NormalizeStep, learned_opt.Orthogonalize,
              learned_opt.ParamScale, learned_opt.CosineDecay, learned_opt.ClipGradients):
    default = cls().config()
    changed = {k for lopt, _, _ in ARCHS.values() for part in _parts(lopt)
               if type(part) is cls for k, v in part.config().items() if v != default[k]}
    if cls not in (learned_opt.MLPOptimizer, learned_opt.AdafactorMLPOptimizer):
      # The schedule's time scales must be the rule's; a chain's flag is read off its rule;
      # the pieces' initial values only set their start (θ is in the file).
      changed = (changed | {"time_scales", "horizon_aware", "initial_mix", "reference_rms"}
                 ) & set(default)
    assert changed == set(default), f"{cls.name}: no ARCHS entry changes {set(default) - changed}"


@pytest.fixture
def small_chunks(monkeypatch):
  """Chunks of 256 elements: the 960-element tensor runs in four, the others in one."""
  monkeypatch.setattr(torch_mlp, "CHUNK", 256)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_random_architecture_equals_optax(arch, tmp_path, small_chunks, monkeypatch):
  lopt, num_steps, lr = ARCHS[arch]
  monkeypatch.setattr(jax_mlp, "FUSE_MIN_SIZE", FUSE.get(arch, jax_mlp.FUSE_MIN_SIZE))
  key = jax.random.key(0)
  start = (learned_opt.inits.adam_like(lopt, key, **STARTS[arch]) if arch in STARTS
           else lopt.init(key))
  theta = _perturbed(start, seed=1)
  path = tmp_path / f"{arch}.safetensors"
  learned_opt.save(path, lopt, theta)
  grads, losses = gradient_stream(100, bad_step=40)
  params = initial_params()
  jax_trace = run_jax(lopt.transform(theta, lr, num_steps=num_steps), params, grads, losses)
  perms = TORCH_LAYOUTS.get(arch, {})
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", learned_opt.NoHorizonWarning)
    torch_trace = run_torch(lambda ps: LearnedOptimizer(ps.values(), path, num_steps=num_steps,
                                                        lr=lr), _to_layout(params, perms),
                            [_to_layout(g, perms) for g in grads], losses)
  # A file that reads the run's length warns when it gets none, and only then.
  reads_length = any(getattr(part, "horizon_aware", False)
                     or isinstance(part, learned_opt.CosineDecay) for part in _parts(lopt))
  warned = [w for w in caught if issubclass(w.category, learned_opt.NoHorizonWarning)]
  assert len(warned) == (1 if reads_length and num_steps is None else 0), arch
  torch_trace = [tuple(_to_layout(x, perms, inverse=True) for x in step) for step in torch_trace]
  assert_traces_close(torch_trace, jax_trace)
  # The bad gradient entries of step 40 gave nan updates there and nowhere else.
  updates = torch_trace[40][0]
  assert np.isnan(updates["matrix"].reshape(-1)[-2]) and np.isnan(updates["conv"].reshape(-1)[-2])
  assert np.isfinite(updates["wide"]).all() and np.isfinite(updates["scalar"])
  assert np.isfinite(np.delete(updates["matrix"].reshape(-1), -2)).all()


@pytest.mark.parametrize("name", learned_opt.list_pretrained())
@pytest.mark.parametrize("num_steps, lr", [(100, 1.0), (None, 0.5)])
def test_shipped_optimizer_equals_optax(name, num_steps, lr, small_chunks):
  grads, losses = gradient_stream(100)
  params = initial_params()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", learned_opt.NoHorizonWarning)
    tx = learned_opt.pretrained(name, lr, num_steps=num_steps)
    jax_trace = run_jax(tx, params, grads, losses)
    torch_trace = run_torch(lambda ps: LearnedOptimizer(ps.values(), name, num_steps=num_steps,
                                                        lr=lr), params, grads, losses)
  lopt = learned_opt.load_pretrained(name)[0]
  assert_traces_close(torch_trace, jax_trace,
                      update_rtols=cosine_factor_rtols(lopt, num_steps, len(jax_trace)))


def test_large_tensor_agrees_to_the_accuracy_of_the_optax_sums(tmp_path, monkeypatch):
  """A 40,000-element tensor at the default chunk size (three chunks, a nan in the last).

  Against the same torch optimizer run in one chunk: to 1e-5. Against optax: to 1e-3, the
  accuracy of the optax transform's own float32 sequential sums at this size (its two
  formulations, ``FUSE_MIN_SIZE`` above and below the tensor's size, differ by as much).
  """
  shapes = {"big": (200, 200), "bias": (7,)}
  lopt = learned_opt.MLPOptimizer(hidden_sizes=(8, 8), tensor=learned_opt.TensorFeatures())
  theta = _perturbed(lopt.init(jax.random.key(2)), seed=3)
  path = tmp_path / "opt.safetensors"
  learned_opt.save(path, lopt, theta)
  assert 2 * torch_mlp.CHUNK < 40_000
  grads, losses = gradient_stream(30, shapes, bad_step=10)
  params = initial_params(shapes)
  make = lambda ps: LearnedOptimizer(ps.values(), path, num_steps=30)
  chunked = run_torch(make, params, grads, losses)
  assert np.isnan(chunked[10][0]["big"]).sum() == 1
  with monkeypatch.context() as m:
    m.setattr(torch_mlp, "CHUNK", 40_000)
    assert_traces_close(chunked, run_torch(make, params, grads, losses))
  jax_trace = run_jax(lopt.transform(theta, num_steps=30), params, grads, losses)
  assert_traces_close(chunked, jax_trace, rtol=1e-3)


def test_param_groups_follow_an_lr_scheduler_as_optax_schedules(small_chunks):
  """Two param groups with their own lr, scheduled by LambdaLR = one optax optimizer over all
  the parameters whose steps are then scaled per group by optax schedules, step for step.

  One optimizer, not one per group (``optax.multi_transform`` of two ``pretrained``): a file
  whose chain starts with ``clip`` takes one global norm over every group's gradients, as
  ``pretrained`` does over the whole tree. The learning rate multiplies the finished step
  (``pretrained``'s docstring), so scaling after it is the same as passing the schedule."""
  labels = {k: ("a" if k in ("matrix", "wide") else "b") for k in SHAPES}
  sched_a = lambda count: 1.0 / (1.0 + 0.05 * count)
  sched_b = lambda count: 0.3 * 0.97 ** count
  tx = optax.chain(learned_opt.pretrained("default", num_steps=100),
                   optax.multi_transform({"a": optax.scale_by_schedule(sched_a),
                                          "b": optax.scale_by_schedule(sched_b)}, labels))
  grads, losses = gradient_stream(60)
  params = initial_params()
  jax_trace = run_jax(tx, params, grads, losses)

  def make(ps):
    groups = [{"params": [p for k, p in ps.items() if labels[k] == "a"]},
              {"params": [p for k, p in ps.items() if labels[k] == "b"], "lr": 0.3}]
    return LearnedOptimizer(groups, "default", num_steps=100)

  schedule = lambda opt: torch.optim.lr_scheduler.LambdaLR(
      opt, [lambda k: 1.0 / (1.0 + 0.05 * k), lambda k: 0.97 ** k])
  torch_trace = run_torch(make, params, grads, losses, schedule=schedule)
  assert_traces_close(torch_trace, jax_trace)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_params_keep_dtype_with_float32_statistics(dtype, small_chunks):
  """bf16/fp16 params: updates in the param's dtype, float32 state, and the same run as optax
  in that dtype (to the dtype's rounding: an update may round the other way at a tie)."""
  grads, losses = gradient_stream(30)
  params = initial_params()
  tx = learned_opt.pretrained("default", 0.5, num_steps=30)
  jax_trace = run_jax(tx, params, grads, losses, dtype=getattr(jnp, dtype))
  holder = {}

  def make(ps):
    holder["opt"] = LearnedOptimizer(ps.values(), "default", num_steps=30, lr=0.5)
    holder["params"] = ps
    return holder["opt"]

  torch_trace = run_torch(make, params, grads, losses, dtype=getattr(torch, dtype))
  for p in holder["params"].values():
    assert p.dtype == getattr(torch, dtype)
    assert {v.dtype for v in holder["opt"].state[p].values()} == {torch.float32}
  assert_traces_close(torch_trace, jax_trace, rtol=1e-2)


# ----------------------------------------------------------------- training a small torch model


def _data(n=64, d=4, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)).astype(np.float32)
  y = (np.sin(x @ rng.standard_normal((d, 1))) + 0.1 * x[:, :1] ** 2).astype(np.float32)
  w1 = (rng.standard_normal((d, 16)) / np.sqrt(d)).astype(np.float32)
  w2 = (rng.standard_normal((16, 1)) / 4.0).astype(np.float32)
  return x, y, {"w1": w1, "b1": np.zeros(16, np.float32), "w2": w2, "b2": np.zeros(1, np.float32)}


def _train_jax(tx, steps):
  x, y, params = _data()
  params = jax.tree.map(jnp.asarray, params)
  loss_fn = lambda p: jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"] - y) ** 2)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return np.array(losses)


def _train_torch(make_optimizer, steps):
  x, y, init = _data()
  x, y = torch.tensor(x), torch.tensor(y)
  model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
  with torch.no_grad():
    model[0].weight.copy_(torch.tensor(init["w1"].T))
    model[0].bias.zero_()
    model[2].weight.copy_(torch.tensor(init["w2"].T))
    model[2].bias.zero_()
  opt = make_optimizer(model.parameters())
  losses = []
  for _ in range(steps):
    def closure():
      opt.zero_grad()
      loss = torch.mean((model(x) - y) ** 2)
      loss.backward()
      return loss
    losses.append(float(opt.step(closure).detach()))
  return np.array(losses)


@pytest.mark.parametrize("which", [*learned_opt.list_pretrained(), "mlp_everything",
                                   "adafactor_small"])
def test_small_torch_model_trains_as_the_jax_model(which, tmp_path):
  steps = 100
  if which in ARCHS:
    lopt, _, _ = ARCHS[which]
    theta = _perturbed(lopt.init(jax.random.key(0)), seed=1)
    path = tmp_path / "opt.safetensors"
    learned_opt.save(path, lopt, theta)
    tx, optimizer = lopt.transform(theta, num_steps=steps), path
  else:
    tx, optimizer = learned_opt.pretrained(which, num_steps=steps), which
  jax_losses = _train_jax(tx, steps)
  torch_losses = _train_torch(lambda ps: LearnedOptimizer(ps, optimizer, num_steps=steps), steps)
  np.testing.assert_allclose(torch_losses, jax_losses, rtol=1e-4)
  if which in learned_opt.list_pretrained():
    assert torch_losses[-1] < 0.7 * torch_losses[0]  # and it trains


# ------------------------------------------------------------- torch conventions and state


def _model_and_batches(dtype=torch.float32, seed=0):
  gen = torch.Generator().manual_seed(seed)
  with torch.random.fork_rng():
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
  model = model.to(dtype)
  batches = [(torch.randn(16, 5, generator=gen).to(dtype), torch.randn(16, 2, generator=gen)
              .to(dtype)) for _ in range(40)]
  return model, batches


def _train(model, opt, batches):
  for x, y in batches:
    opt.zero_grad()
    loss = torch.mean((model(x) - y).float() ** 2)
    loss.backward()
    opt.step(loss=loss)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# A learned schedule and held per-tensor features; the parameter scale held from the first step.
@pytest.mark.parametrize("arch", ["mlp_everything", "mlp_harness_param_scale_at_init_cosine"])
def test_resume_from_state_dict_is_bit_identical(arch, dtype, tmp_path):
  lopt, _, _ = ARCHS[arch]
  path = tmp_path / "opt.safetensors"
  learned_opt.save(path, lopt, _perturbed(lopt.init(jax.random.key(0)), seed=1))
  model, batches = _model_and_batches(dtype)
  initial = {k: v.clone() for k, v in model.state_dict().items()}
  opt = LearnedOptimizer(model.parameters(), path, num_steps=40)
  _train(model, opt, batches)
  straight = model.state_dict()

  model, _ = _model_and_batches(dtype)
  model.load_state_dict(initial)
  opt = LearnedOptimizer(model.parameters(), path, num_steps=40)
  _train(model, opt, batches[:25])
  buffer = io.BytesIO()
  torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
  del model, opt
  buffer.seek(0)
  saved = torch.load(buffer, weights_only=True)
  model, _ = _model_and_batches(dtype, seed=7)  # other weights until loaded
  model.load_state_dict(saved["model"])
  opt = LearnedOptimizer(model.parameters(), path, num_steps=40)
  opt.load_state_dict(saved["opt"])
  for p in model.parameters():
    assert {v.dtype for v in opt.state[p].values()} == {torch.float32}
  _train(model, opt, batches[25:])
  resumed = model.state_dict()
  for k in straight:
    assert torch.equal(resumed[k], straight[k]), k


def test_params_without_grads_are_skipped_and_zero_grad_clears():
  model, batches = _model_and_batches()
  frozen = model[0].bias
  frozen.requires_grad_(False)
  before = frozen.detach().clone()
  opt = LearnedOptimizer(model.parameters(), "default", num_steps=40)
  twin, _ = _model_and_batches()
  twin[0].bias.requires_grad_(False)
  others = [p for p in twin.parameters() if p.requires_grad]
  opt_twin = LearnedOptimizer(others, "default", num_steps=40)
  _train(model, opt, batches[:10])
  _train(twin, opt_twin, batches[:10])
  assert torch.equal(frozen, before) and frozen not in opt.state
  for a, b in zip(model.parameters(), twin.parameters()):
    assert torch.equal(a, b)  # the skipped tensor changes nothing for the others
  opt.zero_grad()
  assert all(p.grad is None for p in model.parameters())
  weights = [p.detach().clone() for p in model.parameters()]
  opt.step()  # no gradients: nothing moves
  assert all(torch.equal(a, b) for a, b in zip(model.parameters(), weights))


def test_closure_loss_feeds_the_learned_schedule(tmp_path):
  lopt, _, _ = ARCHS["mlp_schedule"]
  path = tmp_path / "opt.safetensors"
  learned_opt.save(path, lopt, _perturbed(lopt.init(jax.random.key(0)), seed=1))

  def run(mode):
    model, batches = _model_and_batches()
    opt = LearnedOptimizer(model.parameters(), path)
    for x, y in batches[:15]:
      def closure():
        opt.zero_grad()
        loss = torch.mean((model(x) - y) ** 2)
        loss.backward()
        return loss
      if mode == "closure":
        returned = opt.step(closure)
        assert returned is not None and returned.ndim == 0
      else:
        loss = closure()
        opt.step(loss=loss if mode == "keyword" else None)
    return [p.detach().clone() for p in model.parameters()]

  by_closure, by_keyword, without = run("closure"), run("keyword"), run("none")
  assert all(torch.equal(a, b) for a, b in zip(by_closure, by_keyword))
  assert not all(torch.equal(a, b) for a, b in zip(by_closure, without))


def test_horizon_warning_and_num_steps_as_pretrained(monkeypatch, tmp_path):
  monkeypatch.setattr(torch_optimizer, "_WARNED", set())
  p = [torch.zeros(3, requires_grad=True)]
  with pytest.warns(learned_opt.NoHorizonWarning, match="num_steps"):
    LearnedOptimizer(p, "default")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    LearnedOptimizer(p, "default")  # once per file and process
    LearnedOptimizer(p, "diffusion", num_steps=10)
  # A file not meta-trained horizon-aware: a shipped name ignores num_steps, a path feeds it.
  lopt = learned_opt.MLPOptimizer(hidden_sizes=(4,))
  path = tmp_path / "opt.safetensors"
  learned_opt.save(path, lopt, _perturbed(lopt.init(jax.random.key(0)), seed=1))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert LearnedOptimizer(p, path, num_steps=10).num_steps == 10
  # The same file shipped under a name: never meta-trained with a horizon, num_steps is dropped.
  monkeypatch.setattr(torch_rules, "pretrained_path", lambda name: str(path))
  assert LearnedOptimizer(p, "diffusion", num_steps=10).num_steps is None


def test_training_never_calls_jax(monkeypatch):
  """Reading the file and training use numpy, safetensors and torch only."""
  def forbidden(*args, **kwargs):
    raise AssertionError("JAX was called")

  for module, name in ((jax, "jit"), (jax, "device_put"), (jax, "eval_shape"), (jax, "vmap"),
                       (jnp, "asarray"), (jnp, "array"), (jnp, "zeros"), (jax.tree, "map"),
                       (jax.random, "key")):
    monkeypatch.setattr(module, name, forbidden)
  model, batches = _model_and_batches()
  opt = LearnedOptimizer(model.parameters(), "default", num_steps=40)
  _train(model, opt, batches[:3])


def test_importing_learned_opt_does_not_import_torch():
  code = "import sys, learned_opt; assert 'torch' not in sys.modules, 'torch was imported'"
  subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------- errors


def _rewrite(src, dst, edit_doc=None, edit_tensors=None):
  """Copies an ``mlp`` file (flat tensors) to ``dst``, its document and/or tensors edited."""
  data, doc = file_format.read_document(src)
  tensors = {k: np.array(v) for k, v in file_format.read_meta_params(src, data, doc).items()}
  for edit, target in ((edit_doc, doc), (edit_tensors, tensors)):
    if edit:
      edit(target)
  safetensors.numpy.save_file(tensors, str(dst),
                              metadata={file_format.METADATA_KEY: json.dumps(doc)})
  return dst


def test_files_it_cannot_apply_give_clear_errors(tmp_path):
  p = [torch.zeros(3, requires_grad=True)]
  adam = tmp_path / "adam.safetensors"
  learned_opt.save(adam, learned_opt.Adam(), learned_opt.Adam().init(jax.random.key(0)))
  good = V1_DEFAULT  # a plain v1 rule file (edited below into each bad case)
  cases = {
      "baseline": (adam, r"cannot apply architecture 'adam'.*torch\.optim\.Adam"),
      "unknown_architecture": (_rewrite(good, tmp_path / "a.safetensors",
                                        lambda d: d.update(name="velo")),
                               r"cannot apply architecture 'velo'; it applies"),
      "unknown_option": (_rewrite(good, tmp_path / "b.safetensors",
                                  lambda d: d["config"].update(lstm_size=8)),
                         r"mlp: unsupported config option\(s\) \['lstm_size'\]"),
      "missing_option": (_rewrite(good, tmp_path / "c.safetensors",
                                  lambda d: d["config"].pop("rms_decays")),
                         r"no 'rms_decays'"),
      "bad_value": (_rewrite(good, tmp_path / "d.safetensors",
                             lambda d: d["config"].update(tensor_features="yes")),
                    r"unsupported config option\(s\) \['tensor_features'\]"),
      "bad_v2_value": (_rewrite(good, tmp_path / "h.safetensors", lambda d: d.update(
          format_version=2, config={**d["config"], "tensor": "yes"})),
                       r"'tensor' must be an object or null"),
      "shape": (_rewrite(good, tmp_path / "e.safetensors", edit_tensors=lambda t: t.update(
          w1=np.zeros((3, 3), np.float32))), r"'w1' has shape \(3, 3\), expected \(16, 16\)"),
      "bf16_meta_params": (_rewrite(good, tmp_path / "f.safetensors", edit_tensors=lambda t: t.update(
          w1=t["w1"].astype(jnp.bfloat16))), r"'w1' is bfloat16; .* float32"),
      "newer_format": (_rewrite(good, tmp_path / "g.safetensors",
                                lambda d: d.update(format_version=3)), r"newer"),
      "missing_file": (tmp_path / "nope.safetensors", r"no such file"),
  }
  for i, parts in enumerate([(_MLP(), learned_opt.LearnedSchedule(), learned_opt.Orthogonalize()),
                             (learned_opt.Orthogonalize(), _MLP()),
                             (_MLP(), learned_opt.ClipGradients()),  # the clip goes first
                             (_MLP(), learned_opt.CosineDecay(), learned_opt.LearnedSchedule())]):
    lopt = learned_opt.chain(*parts)
    path = tmp_path / f"chain{i}.safetensors"
    learned_opt.save(path, lopt, lopt.init(jax.random.key(0)))
    names = [p.name for p in parts]
    cases[f"chain{i}"] = (path, re.escape(f"applies chains of [clip], mlp, [normalize_step], "
                                          f"[orthogonalize | param_scale ...], [schedule], "
                                          f"[cosine_decay], got "
                                          f"parts {names}"))
  for kind, (path, message) in cases.items():
    with pytest.raises(learned_opt.FileFormatError, match=message) as info:
      LearnedOptimizer(p, path)
    assert str(info.value).startswith(str(path) + ": "), kind
  with pytest.raises(ValueError, match=r"No pretrained .* 'nope'.*shipped"):
    LearnedOptimizer(p, "nope")


def test_bad_arguments_and_gradients_give_clear_errors():
  p = torch.zeros(3, requires_grad=True)
  for lr in (-1.0, "1", True):
    with pytest.raises(ValueError, match="lr must be a number >= 0"):
      LearnedOptimizer([p], "default", num_steps=10, lr=lr)
  for num_steps in (0, 2.5, -3):
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
      LearnedOptimizer([p], "default", num_steps=num_steps)
  opt = LearnedOptimizer([p], "default", num_steps=10)
  p.grad = torch.ones(3)
  with pytest.raises(ValueError, match="loss .* must be a scalar, got shape \\(2,\\)"):
    opt.step(loss=torch.ones(2))
  emb = torch.nn.Embedding(4, 2, sparse=True)
  opt = LearnedOptimizer(emb.parameters(), "default", num_steps=10)
  emb(torch.tensor([1])).sum().backward()
  with pytest.raises(ValueError, match="sparse gradients"):
    opt.step()


def test_readme_pytorch_example_trains():
  """The README's PyTorch swap runs as written (given a model, batches and a loss) and trains."""
  import pathlib  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
  blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "learned_opt.torch" in b]
  assert len(blocks) == 1 and len([l for l in blocks[0].splitlines() if l.strip()]) == 5
  model, batches = _model_and_batches()
  with torch.no_grad():
    model[2].weight.mul_(3.0)  # a target the initial model is far from
  x = torch.cat([b[0] for b in batches])
  y = torch.sin(x[:, :2])
  batches = [(x, y)] * 500
  loss_fn = lambda out, target: torch.mean((out - target) ** 2)
  first = float(loss_fn(model(x), y).detach())
  namespace = {"model": model, "batches": batches, "loss_fn": loss_fn}
  exec(compile(blocks[0], "README.md", "exec"), namespace)  # pylint: disable=exec-used
  assert float(loss_fn(model(x), y).detach()) < 0.5 * first
