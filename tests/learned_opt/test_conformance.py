"""Conformance suite: every registered learned optimizer must be a drop-in optax optimizer.

Modelled on optax's ``optax/contrib/_common_test.py``; parametrised over
``learned_opt.registry()``, so a newly registered architecture is checked automatically.
Compiled functions are shared per optimizer (module-level caches) to keep the suite fast.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

import learned_opt
from learned_opt import experimental
from learned_opt import testing

# Experimental pieces are checked in composition (test_experimental.py): a piece without
# meta-parameters has no meta-gradient to check on its own.
NAMES = sorted(set(learned_opt.registry()) - set(experimental.NAMES))


# ----------------------------------------------------------------------------- helpers


_tree = testing.every_rank_params
_grads = testing.example_grads
_small = testing.example_params
_shapes_dtypes = testing.shapes_dtypes
_count_compilations = testing.count_compilations


def _assert_bitwise_equal(a, b):
  testing.assert_bitwise_equal(a, b)


def _assert_close(a, b, rtol=1e-6, atol=0.0):
  """chex's tree comparison, in float64 (so bf16 and f16 leaves compare too)."""
  as64 = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float64), t)
  chex.assert_trees_all_close(as64(a), as64(b), rtol=rtol, atol=atol)


@functools.cache
def _setup(name):
  """(lopt, meta_params, jitted update) for one registered optimizer, shared by all tests.

  ``update(mp, grads, state, params, lr)`` takes the meta-parameters and the learning-rate
  multiplier as arguments, so one compiled program serves every test on the same tree.
  """
  lopt = learned_opt.registry()[name]()
  meta_params = lopt.init(jax.random.key(42))

  @jax.jit
  def update(mp, grads, state, params, lr=1.0):
    return lopt.transform(mp, lr).update(grads, state, params)

  return lopt, meta_params, update


@pytest.fixture(params=NAMES)
def name(request):
  return request.param


# ----------------------------------------------------------------------------- basics


def _reads_loss(lopt) -> bool:
  parts = lopt.parts if isinstance(lopt, learned_opt.Chain) else (lopt,)
  return any(isinstance(p, (learned_opt.LearnedSchedule, learned_opt.TensorController))
             for p in parts)


def test_registry_entries_are_frozen_dataclasses_with_names():
  for name, cls in learned_opt.registry().items():  # experimental pieces included
    lopt = cls()
    assert lopt.name == name
    assert type(lopt).from_config(json.loads(json.dumps(lopt.config()))) == lopt
    with pytest.raises(dataclasses.FrozenInstanceError):
      lopt.name2 = 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_scalar_1d_2d_4d_leaves_keep_shape_and_dtype(name, dtype):
  lopt, mp, update = _setup(name)
  tx = lopt.transform(mp)
  params = _tree(dtype)
  grads = _grads(params)
  state = tx.init(params)
  updates, new_state = update(mp, grads, state, params)
  assert _shapes_dtypes(updates) == _shapes_dtypes(params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  assert any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates))
  assert _shapes_dtypes(new_state) == _shapes_dtypes(state)  # stable from step to step
  assert _shapes_dtypes(optax.apply_updates(params, updates)) == _shapes_dtypes(params)


def test_no_recompilation_on_second_step(name):
  lopt, mp, update = _setup(name)
  tx = lopt.transform(mp)
  params = _small()
  grads = _grads(params)
  state = tx.init(params)
  updates, state = update(mp, grads, state, params)  # may compile
  params = optax.apply_updates(params, updates)
  with _count_compilations() as compiled:
    updates, state = update(mp, grads, state, params)
    jax.block_until_ready(updates)
  assert not compiled, f"{name} recompiled on the second step: {compiled}"


def test_unknown_kwargs_ignored_and_loss_accepted(name):
  lopt, mp, update = _setup(name)
  tx = lopt.transform(mp)
  params = _small()
  grads = _grads(params)
  state = tx.init(params)
  loss = {"loss": jnp.asarray(2.5)}
  with_loss = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p, **loss))(grads, state, params)
  extra = jax.make_jaxpr(lambda g, s, p: tx.update(
      g, s, p, **loss, unexpected_extra_arg=1))(grads, state, params)
  assert str(extra) == str(with_loss)  # ignored keywords leave the computation unchanged
  plain = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p))(grads, state, params)
  # Only a learned schedule or controller reads the loss: elsewhere a `loss` feature would
  # show up here.
  assert (str(with_loss) != str(plain)) == _reads_loss(lopt)


def test_params_none_is_valueerror_or_unused(name):
  lopt, mp, _ = _setup(name)
  tx = lopt.transform(mp)
  params = _small()
  grads = _grads(params)
  state = tx.init(params)
  try:
    out = tx.update(grads, state, None)
  except ValueError as e:
    assert "params" in str(e)
  else:  # an optimizer that does not read params must then ignore them entirely
    _assert_bitwise_equal(out, tx.update(grads, state, params))


def test_params_tree_mismatch_is_clear_valueerror(name):
  lopt, mp, _ = _setup(name)
  tx = lopt.transform(mp)
  params = _small()
  state = tx.init(params)
  other = {"a": jnp.ones(3)}
  ours, theirs = str(jax.tree.structure(params)), str(jax.tree.structure(other))
  # A chain's first part reads the gradients, and names itself.
  name = lopt.parts[0].name if isinstance(lopt, learned_opt.Chain) else name
  # Updates and params agree with each other but not with the state built for `params` (only
  # an optimizer whose state follows the params tree can tell: a schedule or a stateless piece
  # alone builds the same state for any tree).
  if jax.tree.structure(state) != jax.tree.structure(tx.init(other)):
    with pytest.raises(ValueError) as info:
      tx.update(other, state, other)
    assert str(info.value) == (f"{name}: the updates tree does not match the optimizer state "
                               f"tree:\n  updates: {theirs}\n  optimizer state: {ours}")
  # Updates and state agree; the params tree is another model's.
  with pytest.raises(ValueError) as info:
    tx.update(_grads(params), state, other)
  assert str(info.value) == (f"{name}: the updates tree does not match the params tree:\n"
                             f"  updates: {ours}\n  params: {theirs}")


_BAD_AT = np.zeros((3, 2), bool)
_BAD_AT[0, 1] = _BAD_AT[2, 0] = True


def test_non_finite_grad_entries_stay_in_their_entries(name):
  # The contract (learned_opt.base.LearnedOptimizer.scale_by): a non-finite gradient entry gives
  # a non-finite update at that entry only. Other tensors are computed as if it were not there,
  # the other entries of its tensor get finite updates that do not depend on which non-finite
  # value it holds, and the state carries it into later steps at that entry only.
  lopt, mp, update = _setup(name)
  params = _small()
  grads = _grads(params)
  state = lopt.transform(mp).init(params)
  clean_u, clean_state = update(mp, grads, state, params)
  clean_next, _ = update(mp, grads, clean_state, params)
  first_mat = None
  for a, b in ((jnp.nan, jnp.inf), (-jnp.inf, jnp.nan), (jnp.inf, -jnp.inf)):
    bad = {"vec": grads["vec"], "mat": grads["mat"].at[0, 1].set(a).at[2, 0].set(b)}
    u, new_state = update(mp, bad, state, params)
    _assert_bitwise_equal(u["vec"], clean_u["vec"])
    mat = np.asarray(u["mat"])
    assert not np.any(np.isfinite(mat[_BAD_AT])), mat
    assert np.all(np.isfinite(mat[~_BAD_AT])), mat
    if first_mat is None:
      first_mat = mat
    np.testing.assert_array_equal(mat[~_BAD_AT], first_mat[~_BAD_AT])
    # One more step with finite gradients from the state the bad step left.
    u2, state2 = update(mp, grads, new_state, params)
    _assert_bitwise_equal(u2["vec"], clean_next["vec"])
    assert np.all(np.isfinite(np.asarray(u2["mat"])[~_BAD_AT]))
    assert _shapes_dtypes(state2) == _shapes_dtypes(state)


# ----------------------------------------------------------------------------- optax wrappers


def test_chain_with_clip_by_global_norm(name):
  lopt, mp, update = _setup(name)
  params = _small()
  grads = jax.tree.map(lambda g: 100.0 * g, _grads(params))
  chained = optax.chain(optax.clip_by_global_norm(1.0), lopt.transform(mp))
  state = chained.init(params)
  out, _ = jax.jit(chained.update)(grads, state, params)
  clipped, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
  ref, _ = update(mp, clipped, lopt.transform(mp).init(params), params)
  _assert_close(out, ref, rtol=1e-5, atol=1e-9)


def test_multisteps_first_update_is_exactly_zero(name):
  lopt, mp, update = _setup(name)
  params = _small()
  grads = _grads(params)
  ms = optax.MultiSteps(lopt.transform(mp), every_k_schedule=2)
  state = ms.init(params)
  ms_update = jax.jit(ms.update)
  first, state = ms_update(grads, state, params, loss=jnp.asarray(1.0))
  for u in jax.tree.leaves(first):  # exactly zero (either sign)
    np.testing.assert_array_equal(u, np.zeros_like(u))
  second, _ = ms_update(grads, state, params, loss=jnp.asarray(1.0))
  # Two identical mini-steps average to the same gradient: one real step.
  ref, _ = update(mp, grads, lopt.transform(mp).init(params), params)
  _assert_close(second, ref, rtol=1e-5, atol=1e-9)


def test_masked_leaves_pass_through(name):
  lopt, mp, update = _setup(name)
  small = _small()
  params = {**small, "frozen": jnp.ones((2, 2)), "bias": jnp.zeros(2)}
  grads = _grads(params)
  mask = {"vec": True, "mat": True, "frozen": False, "bias": False}
  tx = optax.masked(lopt.transform(mp), mask)
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_array_equal(out["frozen"], grads["frozen"])
  np.testing.assert_array_equal(out["bias"], grads["bias"])
  sub = lambda t: {"vec": t["vec"], "mat": t["mat"]}
  ref, _ = update(mp, sub(grads), lopt.transform(mp).init(small), small)
  _assert_close(sub(out), ref, rtol=1e-5, atol=1e-9)


def test_none_leaves(name):
  lopt, mp, update = _setup(name)
  params = _small()
  grads = _grads(params)
  with_none = lambda t: {**t, "frozen": None}
  tx = lopt.transform(mp)
  state = tx.init(with_none(params))
  out, new_state = jax.jit(tx.update)(with_none(grads), state, with_none(params))
  assert out["frozen"] is None
  ref, _ = update(mp, grads, tx.init(params), params)
  _assert_close({k: v for k, v in out.items() if k != "frozen"}, ref, rtol=1e-5, atol=1e-9)
  assert _shapes_dtypes(new_state) == _shapes_dtypes(state)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_state_shape_dtype_stable_under_cond(name, dtype):
  # As optax's test_state_shape_dtype_shard_stability: both branches of lax.cond must agree.
  lopt, mp, _ = _setup(name)
  tx = lopt.transform(mp)
  target = jnp.asarray([1.0, -1.0, 1.0], dtype)
  objective = lambda p: jnp.sum(jnp.square(p["x"] - target))

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(objective)(params)
    value = value.astype(jnp.float16 if dtype != jnp.float16 else jnp.bfloat16)
    cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
    updates, state = jax.lax.cond(cond, lambda: tx.update(grads, state, params, loss=value),
                                  lambda: (params, state))
    return optax.apply_updates(params, updates), state

  params = {"x": jnp.asarray([-1.0, 10.0, 1.0], dtype)}
  state = tx.init(params)
  for _ in range(2):
    params, new_state = step(params, state)
    assert params["x"].dtype == dtype
    cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
    state = jax.lax.cond(cond, lambda s=state: s, lambda s=new_state: s)


def test_inject_hyperparams_parity(name):
  lopt, mp, update = _setup(name)
  params = _small()
  grads = _grads(params)
  injected = optax.inject_hyperparams(lopt.transform)(mp, learning_rate=0.3)
  u_inj, s_inj = jax.jit(injected.update)(grads, injected.init(params), params)
  u_ref, s_ref = update(mp, grads, lopt.transform(mp).init(params), params, 0.3)
  _assert_close(u_inj, u_ref, rtol=1e-6)
  _assert_close(s_inj.inner_state, s_ref, rtol=1e-6)
  np.testing.assert_allclose(s_inj.hyperparams["learning_rate"], 0.3, rtol=1e-7)


def test_learning_rate_multiplier_scales_exactly(name):
  lopt, mp, update = _setup(name)
  params = _small()
  grads = _grads(params)
  state = lopt.transform(mp).init(params)
  base_u, _ = update(mp, grads, state, params, 1.0)
  for lr in (0.5, 4.0, 0.25):  # powers of two: scaling is exact in floating point
    u, _ = update(mp, grads, state, params, lr)
    _assert_bitwise_equal(u, jax.tree.map(lambda x, lr=lr: (lr * x).astype(x.dtype), base_u))
  tx = lopt.transform(mp, optax.constant_schedule(2.0))
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  _assert_bitwise_equal(u, jax.tree.map(lambda x: (2.0 * x).astype(x.dtype), base_u))


@pytest.mark.parametrize("level", ["scale_by", "transform"])
def test_integer_and_bool_leaves_pass_through(name, level):
  lopt, mp, _ = _setup(name)
  tx = lopt.scale_by(mp) if level == "scale_by" else lopt.transform(mp)
  params = {"w": jnp.ones((2, 2)), "step": jnp.asarray(3, jnp.int32),
            "flags": jnp.asarray([True, False])}
  grads = {"w": jnp.full((2, 2), 0.1), "step": jnp.asarray(7, jnp.int32),
           "flags": jnp.asarray([False, True])}
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for k in ("step", "flags"):
    assert out[k].dtype == grads[k].dtype, (k, out[k].dtype)
    np.testing.assert_array_equal(out[k], grads[k])
  assert out["w"].dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out["w"])))


# ----------------------------------------------------------------------------- frameworks


def test_flax_nnx_optimizer(name):
  nnx = pytest.importorskip("flax.nnx")
  lopt, mp, _ = _setup(name)
  tx = lopt.transform(mp)

  class Model(nnx.Module):

    def __init__(self, rngs):
      self.lin = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
      return self.lin(x)

  x = jnp.arange(12.0).reshape(4, 3) / 10
  y = jnp.ones((4, 2))
  model = Model(nnx.Rngs(0))
  graphdef, params0 = nnx.split(model, nnx.Param)
  params0 = jax.tree.map(jnp.copy, params0)  # a snapshot: the optimizer mutates the model
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads, loss=loss)
    return loss

  for _ in range(2):
    train_step(model, optimizer)

  # The same two steps with plain optax on the pure params.
  def pure_loss(p):
    return jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2)

  @jax.jit
  def pure_step(params, state):
    loss, grads = jax.value_and_grad(pure_loss)(params)
    updates, state = tx.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state

  params, state = params0, tx.init(params0)
  for _ in range(2):
    params, state = pure_step(params, state)
  got = nnx.state(model, nnx.Param)
  _assert_close(jax.tree.leaves(got), jax.tree.leaves(params), rtol=1e-5, atol=1e-7)
  assert any(bool(jnp.any(a != b)) for a, b in
             zip(jax.tree.leaves(got), jax.tree.leaves(params0)))


def test_haiku_training_loop(name):
  hk = pytest.importorskip("haiku")
  lopt, mp, _ = _setup(name)
  tx = lopt.transform(mp)
  net = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([4, 2])(x)))
  x = jnp.linspace(-1, 1, 12).reshape(4, 3)
  params = net.init(jax.random.key(0), x)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean(net.apply(p, x) ** 2))(params)
    updates, state = tx.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state, loss

  new_params = params
  for _ in range(3):
    new_params, state, loss = step(new_params, state)
  assert bool(jnp.isfinite(loss))
  assert _shapes_dtypes(new_params) == _shapes_dtypes(params)
  assert any(bool(jnp.any(a != b)) for a, b in
             zip(jax.tree.leaves(new_params), jax.tree.leaves(params)))


# ----------------------------------------------------------------------------- meta-learning


def test_vmap_over_meta_params(name):
  lopt, _, update = _setup(name)
  mps = [lopt.init(jax.random.key(i)) for i in range(2)]
  if "log_lr" in mps[1]:  # deterministic inits: make the two meta-params differ
    mps[1] = {**mps[1], "log_lr": mps[1]["log_lr"] + 0.5}
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *mps)
  params = _small()
  grads = _grads(params)
  state = lopt.transform(mps[0]).init(params)
  batched_u, _ = jax.jit(jax.vmap(update, in_axes=(0, None, None, None)))(
      stacked, grads, state, params)
  for i, mp in enumerate(mps):
    ref, _ = update(mp, grads, state, params)
    _assert_close(jax.tree.map(lambda x, i=i: x[i], batched_u), ref, rtol=1e-5, atol=1e-9)


def test_meta_gradient_matches_finite_differences(name):
  lopt = learned_opt.registry()[name]()
  with jax.enable_x64(True):
    mp = jax.tree.map(lambda x: x.astype(jnp.float64), lopt.init(jax.random.key(7)))
    target = {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]]),
              "b": jnp.asarray([0.3, -0.7])}
    scales = {"w": jnp.asarray([[1.0, 2.0], [3.0, 0.5], [1.5, 1.0]]),
              "b": jnp.asarray([2.0, 1.0])}

    def inner_loss(p):
      return sum(jnp.sum(s * (p[k] - target[k]) ** 2) for k, s in scales.items())

    @jax.jit
    def meta_loss(mp):
      tx = lopt.transform(mp)

      def step(carry, _):
        params, state = carry
        loss, grads = jax.value_and_grad(inner_loss)(params)
        updates, state = tx.update(grads, state, params, loss=loss)
        return (optax.apply_updates(params, updates), state), None

      params = jax.tree.map(jnp.zeros_like, target)
      (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=3)
      return inner_loss(params)

    grad = jax.jit(jax.grad(meta_loss))(mp)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))
    leaves, treedef = jax.tree.flatten(mp)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    direction = jax.tree.unflatten(treedef, [
        jax.random.normal(k, x.shape, jnp.float64) for k, x in zip(keys, leaves)])
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad),
                                                   jax.tree.leaves(direction)))
    # eps = 1e-4: truncation error O(eps²) is negligible, and optimizers that compute in float32
    # internally (even under x64) still give differences accurate well within rtol.
    eps = 1e-4
    shift = lambda s: jax.tree.map(lambda x, d: x + s * eps * d, mp, direction)
    numeric = (meta_loss(shift(1.0)) - meta_loss(shift(-1.0))) / (2 * eps)
    assert abs(float(analytic)) > 0
    # A chain's direction also moves the schedule's exp(s), which scales every float32-rounded
    # step of the rule at once: the central difference carries about twice the rounding noise.
    rtol = 2e-4 if isinstance(lopt, learned_opt.Chain) else 1e-4
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=rtol, atol=1e-12)


# ----------------------------------------------------------------------------- serialization


def test_save_load_round_trip_is_bit_identical(name, tmp_path):
  lopt, mp, update = _setup(name)
  path = tmp_path / f"{name}.safetensors"
  learned_opt.save(path, lopt, mp)
  lopt2, mp2 = learned_opt.load(path)
  assert type(lopt2) is type(lopt) and lopt2 == lopt
  _assert_bitwise_equal(mp2, mp)
  params = _small()
  grads = _grads(params)
  state = lopt.transform(mp).init(params)
  _assert_bitwise_equal(update(mp2, grads, state, params), update(mp, grads, state, params))
  update2 = jax.jit(lambda m, g, s, p: lopt2.transform(m).update(g, s, p))
  _assert_bitwise_equal(update2(mp2, grads, state, params), update(mp, grads, state, params))


def _rewrite(src, dst, edit_doc=None, edit_tensors=None):
  """Copies a saved file to ``dst`` with its JSON metadata and/or tensors edited."""
  from learned_opt import file_format
  data = open(src, "rb").read()
  header = file_format.read_header(str(src), data)
  doc = json.loads(header["__metadata__"]["learned_opt"])
  tensors = {k: np.array(v) for k, v in safetensors.numpy.load_file(str(src)).items()}
  if edit_doc:
    edit_doc(doc)
  if edit_tensors:
    edit_tensors(tensors)
  safetensors.numpy.save_file(tensors, str(dst), metadata={"learned_opt": json.dumps(doc)})
  return dst


def _first_key(tensors):
  return sorted(tensors)[0]


_BAD_EDITS = {
    "unknown_architecture": (lambda d: d.update(name="no_such_optimizer"), None,
                             "unknown architecture"),
    "newer_format_version": (lambda d: d.update(format_version=99), None, "newer"),
    "config_key_not_accepted": (lambda d: d["config"].update(bogus_option=1), None,
                                "config not accepted"),
    "missing_tensor": (None, lambda t: t.pop(_first_key(t)), "missing"),
    "extra_tensor": (None, lambda t: t.update(stowaway=np.zeros(2, np.float32)), "unexpected"),
    "shape_mismatch": (None, lambda t: t.update({_first_key(t): np.zeros((7, 5), np.float32)}),
                       "shape"),
}


@pytest.mark.parametrize("kind", sorted(_BAD_EDITS) + ["truncated"])
def test_incompatible_file_gives_clear_error(name, kind, tmp_path):
  lopt, mp, _ = _setup(name)
  good = tmp_path / "good.safetensors"
  learned_opt.save(good, lopt, mp)
  bad = tmp_path / f"bad_{kind}.safetensors"
  if kind == "truncated":
    data = good.read_bytes()
    bad.write_bytes(data[:len(data) - 3])
    expected = "truncated"
  else:
    edit_doc, edit_tensors, expected = _BAD_EDITS[kind]
    _rewrite(good, bad, edit_doc, edit_tensors)
  with pytest.raises(learned_opt.FileFormatError) as info:
    learned_opt.load(bad)
  assert isinstance(info.value, ValueError)
  assert str(bad) in str(info.value)
  assert expected in str(info.value)
