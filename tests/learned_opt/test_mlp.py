"""Behaviour specific to :class:`learned_opt.MLPOptimizer` and :mod:`learned_opt.features`.

The optax drop-in checks (jit, chain, MultiSteps, masked, dtypes, vmap, grad, save/load) live in
``test_conformance.py``; here: the maths of the features, the output parameterisation, a
reference implementation, the fused path, and error handling.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from learned_opt import features as F
from learned_opt import mlp as mlp_lib
from learned_opt import testing
from learned_opt.mlp import MLPOptimizer, TensorFeatures

SMALL = MLPOptimizer(hidden_sizes=(4, 3), momentum_decays=(0.5, 0.9), rms_decays=(0.9, 0.99),
                     time_scales=(1.0, 10.0, 100.0))


def _params(seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  return {"w": jax.random.normal(k[0], (5, 4)), "b": jax.random.normal(k[1], (4,)),
          "s": jnp.asarray(0.3)}


def _grads(params, seed=1):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [0.1 * jax.random.normal(k, p.shape)
                                      for k, p in zip(keys, leaves)])


def _reference_update(lopt, theta, grads, state, params, num_steps=None):
  """Straightforward numpy version: materialised normalised features, concat, matmul MLP."""
  t = float(state.count)
  shared = [math.tanh(t / tau - 1.0) for tau in lopt.time_scales]
  shared += [0.0, 0.0] if num_steps is None else [t / num_steps, math.log10(num_steps) / 5]
  ws = [np.asarray(theta[f"w{i}"], np.float64) for i in range(len(lopt.hidden_sizes) + 1)]
  bs = [np.asarray(theta[f"b{i}"], np.float64) for i in range(len(lopt.hidden_sizes) + 1)]
  out = {}
  for name in params:
    g = np.asarray(grads[name], np.float64).reshape(-1)
    p = np.asarray(params[name], np.float64).reshape(-1)
    ms = [b * np.asarray(m[name]).reshape(-1) + (1 - b) * g
          for m, b in zip(state.mom, lopt.momentum_decays)]
    vs = [b * np.asarray(v[name]).reshape(-1) + (1 - b) * g * g
          for v, b in zip(state.rms, lopt.rms_decays)]
    rs = [1 / np.sqrt(v + lopt.rsqrt_eps) for v in vs]
    feats = [g, p, *ms, *vs, *rs, *(m * r for r in rs for m in ms)]
    feats = [x / np.sqrt(np.mean(x * x) + lopt.norm_eps) for x in feats]
    x = np.concatenate([np.stack(feats, -1), np.tile(shared, (g.size, 1))], -1)
    for i, (w, b) in enumerate(zip(ws, bs)):
      x = x @ w + b
      if i < len(ws) - 1:
        x = np.maximum(x, 0)
    u = x[:, 0] * np.exp(lopt.exp_mult * x[:, 1]) * lopt.step_mult
    out[name] = u.reshape(np.shape(params[name]))
  return out


@pytest.fixture(scope="module")
def small_run():
  """Two jitted steps of SMALL on a tiny tree: (theta, params, grads, states, updates)."""
  theta = SMALL.init(jax.random.key(0))
  tx = SMALL.scale_by(theta)
  params, grads = _params(), _grads(_params())
  step = jax.jit(tx.update)
  s0 = tx.init(params)
  u1, s1 = step(grads, s0, params)
  u2, s2 = step(_grads(params, seed=2), s1, params)
  return theta, params, grads, (s0, s1, s2), (u1, u2)


# ------------------------------------------------------------------------------ features


def test_second_moment_normalize_has_unit_second_moment():
  x = 3e-2 * jax.random.normal(jax.random.key(0), (7, 9)) + 0.01
  y = F.second_moment_normalize(x, eps=1e-12)
  np.testing.assert_allclose(float(jnp.mean(y * y)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(y / x), np.asarray(y / x)[0, 0], rtol=1e-5)


def test_inverse_rms_ignores_non_finite_entries():
  x = jnp.array([3.0, 4.0, jnp.nan, jnp.inf])
  np.testing.assert_allclose(float(F.inverse_rms(x, eps=0.0)), 1 / math.sqrt(25 / 4), rtol=1e-6)


def test_tensor_means_value_and_gradient():
  xs = [jnp.arange(6.0).reshape(2, 3), jnp.ones((2, 3)) * 2.0]
  np.testing.assert_allclose(np.asarray(F.tensor_means(xs)), [2.5, 2.0])
  g = jax.grad(lambda a: F.tensor_means([a * a, a])[0] + 3 * F.tensor_means([a * a, a])[1])(
      xs[0])
  np.testing.assert_allclose(np.asarray(g), np.asarray((2 * xs[0] + 3) / 6), rtol=1e-6)


def test_time_and_horizon_features_match_formula():
  t = 7
  np.testing.assert_allclose(np.asarray(F.tanh_time_features(t, (1.0, 10.0, 100.0))),
                             [math.tanh(6.0), math.tanh(-0.3), math.tanh(-0.93)], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(F.horizon_features(t, None)), [0.0, 0.0])
  np.testing.assert_allclose(np.asarray(F.horizon_features(t, 100)), [0.07, 0.4], rtol=1e-6)
  shared = SMALL.shared_features(jnp.asarray(t, jnp.int32), 100)
  assert shared.shape == (SMALL.num_shared_features,) == (5,)


def test_feature_scales_normalise_every_feature():
  k = jax.random.split(jax.random.key(3), 6)
  g, p = 1e-3 * jax.random.normal(k[0], (6, 5)), jax.random.normal(k[1], (6, 5))
  mom = [1e-3 * jax.random.normal(k[2], (6, 5)), 1e-3 * jax.random.normal(k[3], (6, 5))]
  rms = [1e-6 * jax.random.uniform(k[4], (6, 5)), 1e-6 * jax.random.uniform(k[5], (6, 5))]
  xs, new_mom, new_rms = SMALL.features(g, p, mom, rms)
  assert len(xs) == SMALL.num_features == len(SMALL.feature_names()) == 12
  scales = SMALL.feature_scales(g, p, new_mom, new_rms)
  expected = [F.inverse_rms(x, SMALL.norm_eps) for x in xs]
  np.testing.assert_allclose(np.asarray(scales), np.asarray(expected), rtol=2e-5)
  unit = MLPOptimizer(norm_eps=0.0, momentum_decays=(0.5,), rms_decays=(0.9,))
  xs, new_mom, new_rms = unit.features(g, p, mom[:1], rms[:1])
  scales = unit.feature_scales(g, p, new_mom, new_rms)
  for x, s in zip(xs, scales):
    np.testing.assert_allclose(float(jnp.mean((x * s) ** 2)), 1.0, rtol=1e-4)


# ------------------------------------------------------------------------------ the optimizer


def test_matches_reference_implementation(small_run):
  theta, params, grads, (s0, s1, _), (u1, u2) = small_run
  ref1 = _reference_update(SMALL, theta, grads, s0, params)
  ref2 = _reference_update(SMALL, theta, _grads(params, seed=2), s1, params)
  for name in params:
    np.testing.assert_allclose(np.asarray(u1[name]), ref1[name], rtol=2e-4, atol=1e-9)
    np.testing.assert_allclose(np.asarray(u2[name]), ref2[name], rtol=2e-4, atol=1e-9)


def test_state_is_the_moving_averages(small_run):
  _, params, grads, (s0, s1, s2), _ = small_run
  assert int(s1.count) == 1 and int(s2.count) == 2
  for m, b in zip(s1.mom, SMALL.momentum_decays):
    np.testing.assert_allclose(np.asarray(m["w"]), (1 - b) * np.asarray(grads["w"]), rtol=1e-6)
  for v, b in zip(s1.rms, SMALL.rms_decays):
    np.testing.assert_allclose(np.asarray(v["b"]), (1 - b) * np.asarray(grads["b"]) ** 2,
                               rtol=1e-6)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), s0) == jax.tree.map(
      lambda x: (x.shape, x.dtype), s2)


def test_fused_path_matches_matmul_path(monkeypatch):
  lopt = MLPOptimizer(hidden_sizes=(3, 2), momentum_decays=(0.9,), rms_decays=(0.99,),
                      time_scales=(10.0,))
  theta = lopt.init(jax.random.key(5))
  params = {"a": jax.random.normal(jax.random.key(1), (4, 6)), "b": jnp.ones((3,))}
  grads = _grads(params, seed=3)
  monkeypatch.setattr(mlp_lib, "FUSE_MIN_SIZE", 0)  # read when the transform is built
  fused = lopt.scale_by(theta)
  monkeypatch.setattr(mlp_lib, "FUSE_MIN_SIZE", 10**9)
  plain = lopt.scale_by(theta)
  assert "fuse_min_size" not in lopt.config()  # a speed knob, not part of the optimizer
  uf, _ = jax.jit(fused.update)(grads, fused.init(params), params)
  um, _ = jax.jit(plain.update)(grads, plain.init(params), params)
  for name in params:
    np.testing.assert_allclose(np.asarray(uf[name]), np.asarray(um[name]), rtol=1e-5)


def test_untrained_default_step_is_tiny_and_finite():
  lopt = MLPOptimizer()
  tx = lopt.transform(lopt.init(jax.random.key(0)))
  params = _params()
  updates, _ = jax.jit(tx.update)(_grads(params), tx.init(params), params)
  for u in jax.tree.leaves(updates):
    assert np.all(np.isfinite(u)) and np.max(np.abs(u)) < 1e-2
  assert max(float(np.max(np.abs(u))) for u in jax.tree.leaves(updates)) > 0


def test_hand_set_meta_params_give_known_update():
  theta = jax.tree.map(jnp.zeros_like, SMALL.init(jax.random.key(0)))
  last = f"b{len(SMALL.hidden_sizes)}"
  theta[last] = jnp.array([2.0, 50.0])  # d = 2, magnitude = 50 everywhere
  tx = SMALL.scale_by(theta)
  params = _params()
  updates, _ = tx.update(_grads(params), tx.init(params), params)
  expected = 2.0 * math.exp(50.0 * SMALL.exp_mult) * SMALL.step_mult
  for u in jax.tree.leaves(updates):
    np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-6)
  theta[last] = jnp.zeros(2)  # all-zero network: d = 0 gives an exactly zero step
  updates, _ = SMALL.scale_by(theta).update(_grads(params), tx.init(params), params)
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(np.asarray(u), 0.0)


def test_num_steps_feature_changes_the_update(small_run):
  theta, params, grads, (s0, *_), (u1, _) = small_run
  tx = SMALL.scale_by(theta, num_steps=10)
  u_h, _ = tx.update(grads, s0._replace(count=jnp.asarray(5, jnp.int32)), params)
  u_n, _ = SMALL.scale_by(theta).update(grads, s0._replace(count=jnp.asarray(5, jnp.int32)),
                                        params)
  assert not np.allclose(np.asarray(u_h["w"]), np.asarray(u_n["w"]))
  ref = _reference_update(SMALL, theta, grads, s0._replace(count=jnp.asarray(5)), params, 10)
  np.testing.assert_allclose(np.asarray(u_h["w"]), ref["w"], rtol=2e-4, atol=1e-9)


def test_non_finite_gradient_stays_in_its_entries(small_run):
  theta, params, grads, (s0, *_), (u1, _) = small_run
  bad = dict(grads, w=grads["w"].at[1, 2].set(jnp.nan).at[0, 0].set(jnp.inf))
  updates, state = jax.jit(SMALL.scale_by(theta).update)(bad, s0, params)
  u = np.asarray(updates["w"])
  assert np.isnan(u[1, 2]) and np.isnan(u[0, 0])
  mask = np.ones_like(u, bool)
  mask[1, 2] = mask[0, 0] = False
  assert np.all(np.isfinite(u[mask]))
  for name in ("b", "s"):  # other tensors are untouched by the bad one
    np.testing.assert_array_equal(np.asarray(updates[name]), np.asarray(u1[name]))


def test_integer_leaves_pass_through():
  theta = SMALL.init(jax.random.key(0))
  tx = SMALL.scale_by(theta)
  params = {"x": jnp.ones((3,)), "step": jnp.asarray(4, jnp.int32), "none": None}
  grads = {"x": jnp.ones((3,)), "step": jnp.asarray(7, jnp.int32), "none": None}
  updates, _ = tx.update(grads, tx.init(params), params)
  assert int(updates["step"]) == 7 and updates["none"] is None
  assert updates["x"].dtype == jnp.float32


def test_low_precision_params_keep_their_dtype_and_float32_state():
  theta = SMALL.init(jax.random.key(0))
  tx = SMALL.scale_by(theta)
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
  grads = _grads(params)
  low = jax.tree.map(lambda g: g.astype(jnp.bfloat16), grads)
  updates, state = tx.update(low, tx.init(params), params)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(state.mom))
  # Updates keep the gradients' dtype, as optax's transforms do: float32 gradients (a chain
  # widens them between its parts) give the same step unrounded.
  wide, _ = tx.update(jax.tree.map(lambda g: g.astype(jnp.float32), low), tx.init(params),
                      params)
  assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(wide))
  testing.assert_bitwise_equal(updates, jax.tree.map(lambda u: u.astype(jnp.bfloat16), wide))


def test_errors_are_clear():
  theta = SMALL.init(jax.random.key(0))
  tx = SMALL.scale_by(theta)
  params = _params()
  state = tx.init(params)
  with pytest.raises(ValueError, match="needs `params`"):
    tx.update(_grads(params), state)
  with pytest.raises(ValueError, match="does not match"):
    tx.update({"w": params["w"]}, state, {"w": params["w"]})
  with pytest.raises(ValueError, match="does not match the params"):
    tx.update(_grads(params), state, {"w": params["w"], "b": params["b"]})
  with pytest.raises(ValueError, match="shape"):
    tx.update(_grads(params), state, dict(params, w=jnp.ones((4, 5))))
  with pytest.raises(ValueError, match="w0"):
    SMALL.scale_by(dict(theta, w0=jnp.ones((3, 3))))
  with pytest.raises(ValueError, match="rms_decays"):
    MLPOptimizer(rms_decays=(1.5,))


def test_meta_gradient_and_vmap():
  theta = SMALL.init(jax.random.key(0))
  params, grads = _params(), _grads(_params())

  def moved(th):
    tx = SMALL.scale_by(th)
    u, _ = tx.update(grads, tx.init(params), params)
    return sum(jnp.sum(x) for x in jax.tree.leaves(u))

  g = jax.jit(jax.grad(moved))(theta)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))
  assert float(jnp.sum(jnp.abs(g["b2"]))) > 0
  thetas = jax.vmap(SMALL.init)(jax.random.split(jax.random.key(1), 3))
  out = jax.jit(jax.vmap(moved))(thetas)
  np.testing.assert_allclose(float(out[1]), float(moved(jax.tree.map(lambda x: x[1], thetas))),
                             rtol=1e-5)


def test_registered_and_config_round_trip():
  assert learned_opt.registry()["mlp"] is MLPOptimizer
  assert MLPOptimizer.from_config(SMALL.config()) == SMALL
  # The saved config: what changes the updates, and whether to give it num_steps.
  assert list(SMALL.config()) == ["hidden_sizes", "momentum_decays", "rms_decays", "time_scales",
                                  "exp_mult", "step_mult", "norm_eps", "rsqrt_eps", "tensor",
                                  "horizon_aware"]
  assert len(dataclasses.fields(MLPOptimizer)) <= 10
  with pytest.raises(ValueError, match="horizon_aware must be a bool"):
    MLPOptimizer(horizon_aware="yes")
  theta = MLPOptimizer().init(jax.random.key(0))
  assert theta["w0"].shape == (12 + 13, 32) and theta["w2"].shape == (32, 2)


# ------------------------------------------------------------------------------ per-tensor features


TENSOR = MLPOptimizer(hidden_sizes=(4, 3), momentum_decays=(0.5, 0.9), rms_decays=(0.9,),
                      time_scales=(1.0, 10.0), tensor=TensorFeatures())
NO_TENSOR = dataclasses.replace(TENSOR, tensor=None)


def test_tensor_log_rms_values_and_clip():
  ms = jnp.asarray([1.0, 1e-4, 1e-36, 0.0, 1e30, jnp.nan])
  z = F.tensor_log_rms(ms)
  # log10 sqrt(ms) / 3: 0, -2/3; 1e-36 and 0 sit at the 1e-30 floor (-5 → -3 after the clip);
  # 1e30 gives 15/3 = 5 → 3; a non-finite mean square counts as zero.
  np.testing.assert_allclose(z, [0.0, -2.0 / 3.0, -3.0, -3.0, 3.0, -3.0], atol=1e-6)


def test_tensor_features_match_reference_with_hand_set_weights():
  theta = TENSOR.init(jax.random.key(0))
  names = TENSOR.tensor_feature_names()
  assert names == ["log_rms_grad", "log_rms_param", "log_rms_mom_0.5*rsqrt_rms_0.9",
                   "log_rms_mom_0.9*rsqrt_rms_0.9"]
  assert theta["wt"].shape == (4, 4)
  params = {"a": 3.0 * jax.random.normal(jax.random.key(1), (5, 4)),
            "b": 1e-2 * jax.random.normal(jax.random.key(2), (4,))}
  grads = _grads(params)
  # With wt = 0 the update is the network without per-tensor features, which the reference
  # implementation computes; adding wt shifts each tensor's first-layer bias by wtᵀ z.
  zero = dict(theta, wt=jnp.zeros_like(theta["wt"]))
  tx = TENSOR.scale_by(zero)
  u0, _ = tx.update(grads, tx.init(params), params)
  plain = {k: v for k, v in theta.items() if k != "wt"}
  ref = _reference_update(NO_TENSOR, plain,
                          grads, tx.init(params), params)
  for name in params:
    np.testing.assert_allclose(np.asarray(u0[name]), ref[name], rtol=2e-4, atol=1e-9)
  for name in params:
    g = np.asarray(grads[name], np.float64)
    p = np.asarray(params[name], np.float64)
    ratio = lambda b: (1 - b) * g / np.sqrt((1 - 0.9) * g * g + TENSOR.rsqrt_eps)
    rms = [np.sqrt(np.mean(x * x)) for x in (g, p, ratio(0.5), ratio(0.9))]
    z = np.clip(np.log10(rms) / 3.0, -3.0, 3.0)
    bias = np.asarray(theta["b0"]) + z @ np.asarray(theta["wt"])
    expected = _reference_update(
        NO_TENSOR,
        dict(plain, b0=jnp.asarray(bias, jnp.float32)), {name: grads[name]},
        tx.init({name: params[name]}), {name: params[name]})[name]
    got, _ = TENSOR.scale_by(theta).update({name: grads[name]},
                                           tx.init({name: params[name]}),
                                           {name: params[name]})
    np.testing.assert_allclose(np.asarray(got[name]), expected, rtol=2e-4, atol=1e-9)


def test_tensor_features_leave_the_adam_start_and_other_draws_unchanged(tmp_path):
  kw = dict(hidden_sizes=(8, 8), exp_mult=1.0)
  on, off = MLPOptimizer(**kw, tensor=TensorFeatures()), MLPOptimizer(**kw)
  start = lambda lopt: learned_opt.inits.adam_like(lopt, jax.random.key(4), decay=3.0)
  theta, ref = start(on), start(off)
  assert set(theta) - set(ref) == {"wt"}
  for k in ref:
    np.testing.assert_array_equal(theta[k], ref[k])
  np.testing.assert_array_equal(theta["wt"][:, :3], 0.0)  # the Adam-like units read no z
  assert np.all(np.asarray(theta["wt"][:, 3:]) != 0.0)
  params = {"w": 5.0 * jax.random.normal(jax.random.key(1), (6, 3)), "v": jnp.zeros((3,))}
  grads = _grads(params)
  for lopt, th in ((on, theta), (off, ref)):
    tx = lopt.transform(th, num_steps=10)
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    if lopt is on:
      got = u
    else:
      want = u
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
  # Saved and loaded with its config; the lever-off config rejects the extra weights.
  path = tmp_path / "tensor.safetensors"
  learned_opt.save(path, on, dict(theta, wt=theta["wt"] + 0.5))
  lopt2, theta2 = learned_opt.load(path)
  assert lopt2 == on and lopt2.tensor == TensorFeatures(grad=True, held=False)
  np.testing.assert_array_equal(theta2["wt"], theta["wt"] + 0.5)
  with pytest.raises(ValueError, match="wt"):
    off.transform(theta)


def test_tensor_features_without_the_gradients_scale():
  lopt = dataclasses.replace(TENSOR, tensor=TensorFeatures(grad=False))
  assert lopt.tensor_feature_names() == ["log_rms_param", "log_rms_mom_0.5*rsqrt_rms_0.9",
                                         "log_rms_mom_0.9*rsqrt_rms_0.9"]
  theta = lopt.init(jax.random.key(0))
  assert theta["wt"].shape == (3, 4)
  # The same as the full set with a zero row for the gradient's RMS: at any gradient scale.
  full = dict(theta, wt=jnp.concatenate([jnp.zeros((1, 4)), theta["wt"]]))
  params = {"a": jax.random.normal(jax.random.key(1), (5, 4))}
  for scale in (1.0, 1e3):
    grads = jax.tree.map(lambda g: scale * g, _grads(params))
    tx, ref = lopt.scale_by(theta), TENSOR.scale_by(full)
    u, _ = tx.update(grads, tx.init(params), params)
    v, _ = ref.update(grads, ref.init(params), params)
    np.testing.assert_allclose(u["a"], v["a"], rtol=1e-6)
  # As a saved config: a nested object; as an argument, a dict of its fields works too.
  assert lopt.config()["tensor"] == {"grad": False, "held": False}
  assert MLPOptimizer(**{**TENSOR.config(), "tensor": {"grad": False}}) == lopt
  assert MLPOptimizer.from_config(json.loads(json.dumps(lopt.config()))) == lopt
  with pytest.raises(ValueError, match=r"tensor: unknown keys \['initial'\]"):
    MLPOptimizer(tensor={"initial": True})
  with pytest.raises(ValueError, match="tensor must be a TensorFeatures"):
    MLPOptimizer(tensor=True)


def test_tensor_features_initial_are_the_first_updates_held_for_the_run():
  held = dataclasses.replace(TENSOR, tensor=TensorFeatures(held=True))
  theta = held.init(jax.random.key(0))
  assert set(theta) == set(TENSOR.init(jax.random.key(0)))  # the same meta-parameters
  params = {"a": jax.random.normal(jax.random.key(1), (5, 4)), "n": jnp.arange(3),
            "b": 0.1 * jax.random.normal(jax.random.key(2), (4,))}
  grads = dict(_grads({k: params[k] for k in ("a", "b")}), n=jnp.zeros(3, jnp.int32))
  live_tx, held_tx = TENSOR.scale_by(theta), jax.jit(held.scale_by(theta).update)
  s_live, s_held = live_tx.init(params), held.scale_by(theta).init(params)
  assert s_held.tensor_z["n"].shape == (0,) and s_held.tensor_z["a"].shape == (4,)
  # The first update is the live one, and the state holds its per-tensor features.
  u_live, s_live = live_tx.update(grads, s_live, params)
  u_held, s_held = held_tx(grads, s_held, params)
  for k in ("a", "b"):
    np.testing.assert_allclose(u_held[k], u_live[k], rtol=1e-6)
    g, p = np.asarray(grads[k], np.float64), np.asarray(params[k], np.float64)
    ratio = lambda b, g=g: (1 - b) * g / np.sqrt((1 - 0.9) * g * g + TENSOR.rsqrt_eps)
    rms = [np.sqrt(np.mean(x * x)) for x in (g, p, ratio(0.5), ratio(0.9))]
    np.testing.assert_allclose(s_held.tensor_z[k], np.clip(np.log10(rms) / 3, -3, 3),
                               rtol=1e-5)
  # Later, parameters 100x larger leave the held features (and so, the per-parameter
  # features being scale-free, the step) unchanged; the live features move, and the step.
  big = {k: 100 * v if k != "n" else v for k, v in params.items()}
  u1, _ = held_tx(grads, s_held, params)
  u2, s2 = held_tx(grads, s_held, big)
  np.testing.assert_array_equal(s2.tensor_z["a"], s_held.tensor_z["a"])
  np.testing.assert_allclose(u2["a"], u1["a"], rtol=1e-4, atol=1e-12)  # float32
  v1, _ = live_tx.update(grads, s_live, params)
  v2, _ = live_tx.update(grads, s_live, big)
  assert np.max(np.abs(np.asarray(v2["a"]) - np.asarray(v1["a"]))) > 1e-2 * np.max(
      np.abs(np.asarray(v1["a"])))
  np.testing.assert_array_equal(u1["n"], grads["n"])
