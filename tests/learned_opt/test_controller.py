"""The learned per-tensor controller (:mod:`learned_opt.controller`) composed after Adam."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt import testing
from learned_opt.controller import TensorController

ADAM = learned_opt.Adam(initial_learning_rate=0.015)
CONTROLLER = TensorController(hidden_size=4, time_scales=(1.0, 10.0), loss_decays=(0.5, 0.9))
CTRL = learned_opt.chain(ADAM, CONTROLLER)
# w0's rows: cosine, log relative step, log_lr, 2 time, 2 horizon, 2 EMAs + initial loss.
NUM_INPUTS = 3 + 2 + 2 + 3
MAX_CHANGE = CONTROLLER.max_change


def _params():
  k = jax.random.split(jax.random.key(0), 3)
  return {"w": jax.random.normal(k[0], (5, 4)), "b": jax.random.normal(k[1], (4,)),
          "s": jnp.asarray(0.3)}


_grads = testing.example_grads


def _run(lopt, theta, losses, num_steps=5, jit=False, params=None):
  """Steps of ``lopt`` on the tiny tree, one per entry of ``losses`` (None: no loss).

  Returns the updates and the controller's last state (None without a controller).
  """
  tx = lopt.transform(theta, num_steps=num_steps)
  update = jax.jit(tx.update) if jit else tx.update
  params = _params() if params is None else params
  state, ups = tx.init(params), []
  for i, loss in enumerate(losses):
    extra = {} if loss is None else {"loss": jnp.asarray(loss, jnp.float32)}
    u, state = update(_grads(params, seed=i + 1), state, params, **extra)
    ups.append(u)
  inner = state[0]  # the learned part's state; state[1] is the learning-rate multiplier's
  if isinstance(lopt, learned_opt.Chain):
    return ups, inner[lopt.part_names.index("controller")]
  return ups, (inner if isinstance(lopt, TensorController) else None)


def _constant(theta, b1):
  """Meta-parameters whose action is ``a = b1`` at every step (a zero output weight)."""
  return dict(theta, w1=jnp.zeros_like(theta["w1"]), b1=jnp.asarray([b1], jnp.float32))


def _reading(row, lopt=CONTROLLER):
  """Meta-parameters with ``a = relu(x[row])``: hidden unit 0 reads one feature only."""
  theta = lopt.init(jax.random.key(0))
  w0 = jnp.zeros_like(theta["w0"]).at[row, 0].set(1.0)
  return dict(theta, w0=w0, w1=jnp.zeros_like(theta["w1"]).at[0, 0].set(1.0))


def _bits(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_fresh_controller_gives_bit_identical_updates():
  theta = CTRL.init(jax.random.key(3))
  assert set(theta) == {"adam", "controller"}
  _bits(theta["adam"], ADAM.init(jax.random.key(3)))
  assert theta["controller"]["w0"].shape == (NUM_INPUTS, 4)
  np.testing.assert_array_equal(theta["controller"]["w1"], np.zeros((4, 1)))
  np.testing.assert_array_equal(theta["controller"]["b1"], np.zeros((1,)))
  for jit in (False, True):  # eager, and compiled as in meta-training
    ups, ctrl = _run(CTRL, theta, [2.0, 1.0, 1.7], jit=jit)
    ref, _ = _run(ADAM, ADAM.init(None), [2.0, 1.0, 1.7], jit=jit)
    for u, r in zip(ups, ref):
      _bits(u, r)
    assert int(ctrl.count) == 3
    for log_lr in jax.tree.leaves(ctrl.log_lr):
      assert log_lr.shape == () and log_lr.dtype == jnp.float32 and float(log_lr) == 0.0
    _bits(ctrl.prev, ups[-1])  # the last incoming update (Adam's, learning rate 1)
  # The loss statistics are the schedule's: losses 2, 1, 1.7 with decays (0.5, 0.9).
  np.testing.assert_allclose(ctrl.loss_emas, [1.35, 0.422], rtol=1e-6)
  assert int(ctrl.loss_count) == 3 and float(ctrl.initial_loss) == 2.0


def test_constant_action_compounds_and_is_clipped():
  theta = _constant(CONTROLLER.init(jax.random.key(1)), 0.5)
  grads = [_grads(_params(), seed=i + 1) for i in range(4)]
  ups, state = _run(CONTROLLER, theta, [None, 3.0, 2.0, None])
  delta = MAX_CHANGE * math.tanh(0.5)
  for k, (u, g) in enumerate(zip(ups, grads), start=1):  # step k: e^{kΔ} times its update
    for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(g)):
      np.testing.assert_allclose(x, math.exp(k * delta) * np.asarray(y), rtol=1e-6)
  for log_lr in jax.tree.leaves(state.log_lr):
    np.testing.assert_allclose(log_lr, 4 * delta, rtol=1e-6)
  # A saturated action (tanh(50) = 1) climbs by max_change and stops at log_clip.
  clipped = TensorController(hidden_size=4, time_scales=(1.0, 10.0), loss_decays=(0.5, 0.9),
                             max_change=0.1, log_clip=0.25)
  ups, state = _run(clipped, _constant(clipped.init(jax.random.key(1)), 50.0), [None] * 4)
  for k, (u, g) in enumerate(zip(ups, grads)):
    expected = math.exp([0.1, 0.2, 0.25, 0.25][k])
    np.testing.assert_allclose(u["w"], expected * np.asarray(g["w"]), rtol=1e-6)
  np.testing.assert_allclose(state.log_lr["b"], 0.25, rtol=1e-7)
  ups, state = _run(clipped, _constant(clipped.init(jax.random.key(1)), -50.0), [None] * 3)
  np.testing.assert_allclose(state.log_lr["s"], -0.25, rtol=1e-7)


def test_tensor_features_by_hand():
  f = TensorController.tensor_features
  u, prev, p = jnp.asarray([3.0, 4.0]), jnp.asarray([4.0, 3.0]), jnp.asarray([0.5, -0.5])
  # cos = (12 + 12) / (5 · 5); RMS(u) = sqrt(12.5), RMS(p) = 0.5.
  ratio = math.log10(math.sqrt(12.5) / (0.5 + 1e-3))
  np.testing.assert_allclose(f(u, p, prev, jnp.asarray(0.0)), [0.96, ratio, 0.0], rtol=1e-6)
  # The current log_lr scales the step: + ℓ / ln 10; a zero previous update: cosine 0.
  np.testing.assert_allclose(f(u, p, jnp.zeros(2), jnp.asarray(1.0)),
                             [0.0, ratio + 1.0 / math.log(10.0), 1.0], rtol=1e-6)
  # A scalar turning back; the ratio's floor under a zero parameter: 2 / 1e-3.
  np.testing.assert_allclose(f(jnp.asarray(2.0), jnp.asarray(0.0), jnp.asarray(-1.0),
                               jnp.asarray(0.0)), [-1.0, 3.0 + math.log10(2.0), 0.0], rtol=1e-6)
  # Clipped at ±5: a tiny step on a large parameter, a huge one on a zero parameter.
  assert float(f(jnp.full((3,), 1e-7), jnp.full((3,), 10.0), jnp.ones(3), 0.0)[1]) == -5.0
  assert float(f(jnp.full((3,), 1e4), jnp.zeros(3), jnp.ones(3), 0.0)[1]) == 5.0
  # A non-finite parameter entry counts as zero (the update comes in cleaned by the caller).
  got = f(jnp.asarray([3.0, 4.0, 0.0]), jnp.asarray([0.5, -0.5, jnp.inf]),
          jnp.asarray([4.0, 3.0, 7.0]), 0.0)
  cos = 24.0 / math.sqrt(25.0 * 74.0)
  ratio3 = math.log10(math.sqrt(25.0 / 3) / (math.sqrt(0.5 / 3) + 1e-3))
  np.testing.assert_allclose(got, [cos, ratio3, 0.0], rtol=1e-6)
  # Empty and all-zero tensors: finite.
  np.testing.assert_array_equal(f(jnp.zeros((0,)), jnp.zeros((0,)), jnp.zeros((0,)), 0.0),
                                [0.0, 0.0, 0.0])
  np.testing.assert_array_equal(f(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), 0.0),
                                [0.0, -5.0, 0.0])


def test_update_reads_the_features_by_hand():
  params = {"a": jnp.asarray([0.5, -0.5]), "b": jnp.asarray(1.0)}
  steps = [{"a": jnp.asarray([4.0, 3.0]), "b": jnp.asarray(2.0)},
           {"a": jnp.asarray([3.0, 4.0]), "b": jnp.asarray(-1.0)}]
  # a = relu(cosine): the first step has no previous update; then cos 0.96 and -1 (relu: 0).
  tx = CONTROLLER.scale_by(_reading(0))
  state = tx.init(params)
  u1, state = tx.update(steps[0], state, params)
  _bits(u1, steps[0])
  u2, state = tx.update(steps[1], state, params)
  delta = MAX_CHANGE * math.tanh(0.96)
  np.testing.assert_allclose(u2["a"], math.exp(delta) * np.asarray([3.0, 4.0]), rtol=1e-6)
  np.testing.assert_allclose(state.log_lr["a"], delta, rtol=1e-6)
  assert float(u2["b"]) == -1.0 and float(state.log_lr["b"]) == 0.0
  _bits(state.prev, steps[1])
  # a = relu(r): r reads the params and the current log_lr (0 at the first step).
  tx = CONTROLLER.scale_by(_reading(1))
  state = tx.init(params)
  u = {"a": jnp.asarray([3.0, 4.0]), "b": jnp.asarray(2.0)}
  r = math.log10(math.sqrt(12.5) / (0.5 + 1e-3))
  d1 = MAX_CHANGE * math.tanh(r)
  out, state = tx.update(u, state, params)
  np.testing.assert_allclose(out["a"], math.exp(d1) * np.asarray([3.0, 4.0]), rtol=1e-6)
  d2 = MAX_CHANGE * math.tanh(r + d1 / math.log(10.0))
  out, state = tx.update(u, state, params)
  np.testing.assert_allclose(state.log_lr["a"], d1 + d2, rtol=1e-6)
  np.testing.assert_allclose(out["a"], math.exp(d1 + d2) * np.asarray([3.0, 4.0]), rtol=1e-6)
  rb = math.log10(2.0 / (1.0 + 1e-3))
  np.testing.assert_allclose(state.log_lr["b"], MAX_CHANGE * (
      math.tanh(rb) + math.tanh(rb + MAX_CHANGE * math.tanh(rb) / math.log(10.0))), rtol=1e-6)


def test_non_float_leaves_pass_through_and_dtypes_are_kept():
  theta = _constant(CONTROLLER.init(jax.random.key(0)), math.atanh(0.5))  # Δ = 0.05
  tx = CONTROLLER.scale_by(theta)
  params = {"f": jnp.ones((2,), jnp.bfloat16), "i": jnp.arange(3), "n": None,
            "h": jnp.ones((2, 2), jnp.float16)}
  updates = {"f": jnp.ones((2,), jnp.bfloat16), "i": jnp.arange(3), "n": None,
             "h": jnp.full((2, 2), 0.5, jnp.float16)}
  state = tx.init(params)
  u, new_state = jax.jit(tx.update)(updates, state, params)
  assert u["f"].dtype == jnp.bfloat16 and u["h"].dtype == jnp.float16 and u["n"] is None
  np.testing.assert_allclose(np.asarray(u["f"], np.float32), math.exp(0.05), rtol=1e-2)
  np.testing.assert_allclose(np.asarray(u["h"], np.float32), 0.5 * math.exp(0.05), rtol=1e-3)
  np.testing.assert_array_equal(u["i"], np.arange(3))
  assert new_state.prev["f"].dtype == jnp.float32 and new_state.prev["i"].shape == (0,)
  assert new_state.log_lr["i"].shape == (0,) and new_state.log_lr["n"] is None
  assert testing.shapes_dtypes(new_state) == testing.shapes_dtypes(state)


def test_non_finite_entry_stays_in_its_tensor():
  theta = CONTROLLER.init(jax.random.key(2))
  theta = dict(theta, w1=0.5 * jax.random.normal(jax.random.key(3), (4, 1)),
               b0=jnp.full((4,), 0.1), b1=jnp.asarray([0.2]))
  tx = CONTROLLER.transform(theta, num_steps=10)
  update = jax.jit(tx.update)
  params = testing.example_params()
  grads = _grads(params)
  state = tx.init(params)
  clean_u, clean_state = update(grads, state, params, loss=jnp.asarray(2.0))
  clean_next, _ = update(grads, clean_state, params, loss=jnp.asarray(1.5))
  at = np.zeros((3, 2), bool)
  at[1, 0] = True
  mats = []
  for bad_value in (jnp.nan, jnp.inf, -jnp.inf):
    bad = dict(grads, mat=grads["mat"].at[1, 0].set(bad_value))
    u, new_state = update(bad, state, params, loss=jnp.asarray(2.0))
    _bits(u["vec"], clean_u["vec"])
    mat = np.asarray(u["mat"])
    assert not np.isfinite(mat[at]).any() and np.isfinite(mat[~at]).all()
    mats.append(mat[~at])
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(new_state))
    u2, state2 = update(grads, new_state, params, loss=jnp.asarray(1.5))
    _bits(u2["vec"], clean_next["vec"])
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((u2, state2)))
  for m in mats[1:]:  # the other entries do not depend on the bad value
    np.testing.assert_array_equal(m, mats[0])
  # A non-finite parameter entry: the other tensors and the state stay finite.
  bad_params = dict(params, mat=params["mat"].at[0, 0].set(jnp.nan))
  u, new_state = update(grads, state, bad_params)
  _bits(u["vec"], update(grads, state, params)[0]["vec"])
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((u, new_state)))


def test_the_conformance_checks_pass_with_a_working_controller():
  theta = CTRL.init(jax.random.key(4))
  theta["controller"] = dict(theta["controller"], b1=jnp.asarray([0.3]),
                             w1=0.5 * jax.random.normal(jax.random.key(5), (4, 1)))
  assert testing.check_learned_optimizer(CTRL, theta) == tuple(testing.CHECKS)


def test_params_are_required_and_trees_checked():
  theta = CONTROLLER.init(jax.random.key(0))
  tx = CONTROLLER.scale_by(theta)
  params = _params()
  with pytest.raises(ValueError, match=r"controller: update\(\) needs `params`"):
    tx.update(_grads(params), tx.init(params), None)
  with pytest.raises(ValueError, match="controller: the updates tree does not match the "
                                       "params tree"):
    tx.update(_grads(params), tx.init(params), {"a": jnp.ones(3)})
  with pytest.raises(ValueError, match="controller: the updates tree does not match the "
                                       "optimizer state tree"):
    tx.update({"a": jnp.ones(3)}, tx.init(params), {"a": jnp.ones(3)})


def test_config_errors():
  bad = [({"hidden_size": 0}, "hidden_size must be an int >= 1, got 0"),
         ({"hidden_size": True}, "hidden_size must be an int >= 1, got True"),
         ({"time_scales": (1.0, -2.0)}, r"time_scales must be positive, got \(1.0, -2.0\)"),
         ({"loss_decays": (1.0,)}, r"loss_decays must lie in \[0, 1\), got \(1.0,\)"),
         ({"max_change": 0.0}, "max_change must be a finite number > 0, got 0.0"),
         ({"max_change": float("inf")}, "max_change must be a finite number > 0, got inf"),
         ({"max_change": "0.1"}, "max_change must be a finite number > 0, got '0.1'"),
         ({"log_clip": -1.0}, r"log_clip must be a number in \(0, 80\], got -1.0"),
         ({"log_clip": 100.0}, r"log_clip must be a number in \(0, 80\], got 100.0"),
         ({"log_clip": float("nan")}, r"log_clip must be a number in \(0, 80\], got nan"),
         ({"horizon_aware": "yes"}, "horizon_aware must be a bool, got 'yes'")]
  for kwargs, message in bad:
    with pytest.raises(ValueError, match=message):
      TensorController(**kwargs)
  theta = CONTROLLER.init(jax.random.key(0))
  with pytest.raises(ValueError, match=r"controller: meta_params\['w0'\] has shape \(3, 4\), "
                                       r"expected \(10, 4\)"):
    CONTROLLER.scale_by(dict(theta, w0=jnp.ones((3, 4))))
  with pytest.raises(ValueError, match=r"controller: meta_params\['w1'\] has shape \(4,\)"):
    CONTROLLER.scale_by(dict(theta, w1=jnp.ones((4,))))
  with pytest.raises(ValueError, match="controller: meta_params must be a dict with keys"):
    CONTROLLER.scale_by({"w0": theta["w0"]})


def test_config_and_save_load_round_trip(tmp_path):
  assert learned_opt.registry()["controller"] is TensorController
  lopt = TensorController(hidden_size=3, max_change=0.05, log_clip=4.0, horizon_aware=True)
  config = json.loads(json.dumps(lopt.config()))
  assert config == {"hidden_size": 3, "time_scales": list(lopt.time_scales),
                    "loss_decays": [0.9, 0.99, 0.999], "max_change": 0.05, "log_clip": 4.0,
                    "horizon_aware": True}
  assert TensorController.from_config(config) == lopt
  chain_config = json.loads(json.dumps(CTRL.config()))
  assert chain_config["parts"][1] == {"name": "controller", "config": CONTROLLER.config()}
  assert learned_opt.Chain.from_config(chain_config) == CTRL
  theta = CTRL.init(jax.random.key(7))
  theta["controller"] = dict(theta["controller"], b1=jnp.asarray([-0.4]),
                             w1=jax.random.normal(jax.random.key(8), (4, 1)))
  path = tmp_path / "ctrl.safetensors"
  learned_opt.save(path, CTRL, theta)
  lopt2, theta2 = learned_opt.load(path)
  assert lopt2 == CTRL
  testing.assert_bitwise_equal(theta2, theta)
  a, _ = _run(CTRL, theta, [2.0, 1.0, 1.2])
  b, _ = _run(lopt2, theta2, [2.0, 1.0, 1.2])
  _bits(a, b)
  ref, _ = _run(ADAM, theta["adam"], [None] * 3)  # the controller did change the steps
  assert not np.allclose(a[-1]["w"], ref[-1]["w"])


def test_learned_opt_torch_refuses_a_controller_chain(tmp_path):
  torch = pytest.importorskip("torch")
  from learned_opt.torch import LearnedOptimizer  # pylint: disable=import-outside-toplevel
  for parts in ((learned_opt.MLPOptimizer(), TensorController()),
                (ADAM, TensorController())):
    lopt = learned_opt.chain(*parts)
    path = tmp_path / f"{parts[0].name}_controller.safetensors"
    learned_opt.save(path, lopt, lopt.init(jax.random.key(0)))
    with pytest.raises(learned_opt.FileFormatError) as info:
      LearnedOptimizer([torch.zeros(3, requires_grad=True)], path)
    assert str(info.value) == (f"{path}: learned_opt.torch applies chains of [clip], mlp, "
                               f"[normalize_step], [orthogonalize | param_scale ...], "
                               f"[schedule], [cosine_decay], got parts "
                               f"['{parts[0].name}', 'controller']")
