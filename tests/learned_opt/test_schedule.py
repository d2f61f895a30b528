"""The learned schedule (:mod:`learned_opt.schedule`) composed after the MLP rule."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt import features as F
from learned_opt import inits
from learned_opt import testing
from learned_opt.mlp import MLPOptimizer
from learned_opt.schedule import LearnedSchedule

RULE = MLPOptimizer(hidden_sizes=(8, 8), time_scales=(1.0, 10.0))
SCHEDULE = LearnedSchedule(hidden_size=4, time_scales=(1.0, 10.0), loss_decays=(0.5, 0.9))
SCHED = learned_opt.chain(RULE, SCHEDULE)


def _params():
  k = jax.random.split(jax.random.key(0), 3)
  return {"w": jax.random.normal(k[0], (5, 4)), "b": jax.random.normal(k[1], (4,)),
          "s": jnp.asarray(0.3)}


_grads = testing.example_grads


def _run(lopt, theta, losses, num_steps=5, key="loss", jit=False):
  """Steps of ``lopt`` on the tiny tree, one per entry of ``losses`` (None: no loss).

  Returns the updates and the schedule's state (None without a schedule).
  """
  tx = lopt.transform(theta, num_steps=num_steps)
  update = jax.jit(tx.update) if jit else tx.update
  params = _params()
  state, ups = tx.init(params), []
  for i, loss in enumerate(losses):
    extra = {} if loss is None else {key: jnp.asarray(loss, jnp.float32)}
    u, state = update(_grads(params, seed=i + 1), state, params, **extra)
    ups.append(u)
  inner = state[0]
  return ups, (inner[1] if isinstance(lopt, learned_opt.Chain) else None)


def _start(lopt, key=3):
  return inits.adam_like(lopt, jax.random.key(key), decay=3.0)


def _tuned(theta):
  """Hidden unit 0 reads the first loss feature (decay 0.5); the output is s = 2 relu(-f)."""
  col = len(SCHEDULE.time_scales) + F.NUM_HORIZON_FEATURES
  w0 = jnp.zeros_like(theta["schedule"]["w0"]).at[col, 0].set(-1.0)
  return dict(theta, schedule=dict(theta["schedule"], w0=w0,
                                   w1=jnp.zeros((4, 1)).at[0, 0].set(2.0)))


def _assert_tree_close(u, ref, factor, rtol=1e-5):
  for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(ref)):
    np.testing.assert_allclose(x, factor * np.asarray(y), rtol=rtol)


def test_fresh_schedule_gives_bit_identical_updates():
  theta, plain = _start(SCHED), _start(RULE)
  # The rule's draws are the lone rule's; the schedule's output layer is zero.
  assert set(theta) == {"mlp", "schedule"}
  for k in plain:
    np.testing.assert_array_equal(theta["mlp"][k], plain[k])
  np.testing.assert_array_equal(theta["schedule"]["w1"], np.zeros((4, 1)))
  assert theta["schedule"]["w0"].shape == (2 + 2 + 3, 4)  # time, horizon, 2 EMAs + initial
  for jit in (False, True):  # eager, and compiled as in meta-training
    ups, _ = _run(SCHED, theta, [2.0, 1.5, 1.7], jit=jit)
    ref, _ = _run(RULE, plain, [2.0, 1.5, 1.7], jit=jit)
    for u, r in zip(ups, ref):
      for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(r)):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_loss_features_follow_the_moving_averages():
  # Two steps, losses 2 then 1, decays (0.5, 0.9): e = (1.0, 0.2) then (1.0, 0.28);
  # corrected (2.0, 2.0) then (1/0.75, 0.28/0.19).
  emas, count, init = jnp.zeros(2), jnp.zeros([], jnp.int32), jnp.zeros([])
  f1, emas, count, init = F.loss_features(jnp.asarray(2.0), emas, count, init, (0.5, 0.9))
  np.testing.assert_allclose(f1, [0.0, 0.0, 0.0], atol=1e-6)
  f2, emas, count, init = F.loss_features(jnp.asarray(1.0), emas, count, init, (0.5, 0.9))
  np.testing.assert_allclose(emas, [1.0, 0.28], rtol=1e-6)
  assert int(count) == 2 and float(init) == 2.0
  np.testing.assert_allclose(f2, [math.log(0.75), math.log(0.19 / 0.28), math.log(0.5)],
                             rtol=1e-5)
  f3, *_ = F.loss_features(jnp.asarray(2e-4), emas, count, init, (0.5, 0.9))
  assert float(f3[-1]) == -5.0  # clipped at ±5


def test_schedule_state_and_multiplier_follow_the_loss():
  # Losses 2, 1 give f = log(0.75) at step 2, so that step is scaled by exp(-2 log 0.75).
  tuned = _tuned(_start(SCHED, 0))
  ref, _ = _run(RULE, _start(RULE, 0), [None, None])
  for key in ("loss", "value"):  # the project's keyword and optax's
    ups, state = _run(SCHED, tuned, [2.0, 1.0], key=key)
    np.testing.assert_allclose(state.loss_emas, [1.0, 0.28], rtol=1e-6)
    assert int(state.loss_count) == 2 and float(state.initial_loss) == 2.0
    assert int(state.count) == 2
    _assert_tree_close(ups[0], ref[0], 1.0)
    _assert_tree_close(ups[1], ref[1], math.exp(-2.0 * math.log(0.75)))


def test_schedule_without_loss_or_with_bad_loss_is_safe():
  tuned = _tuned(_start(SCHED, 0))
  ref, _ = _run(RULE, _start(RULE, 0), [None] * 3)
  ups, state = _run(SCHED, tuned, [None] * 3)  # no loss: zero loss features, the rule's steps
  assert int(state.loss_count) == 0
  np.testing.assert_array_equal(state.loss_emas, [0.0, 0.0])
  for u, r in zip(ups, ref):
    _assert_tree_close(u, r, 1.0)
  # Non-finite and non-positive losses are skipped: the state is the one of losses 2, 1.
  ups, state = _run(SCHED, tuned, [2.0, float("nan"), float("inf"), -1.0, 1.0])
  np.testing.assert_allclose(state.loss_emas, [1.0, 0.28], rtol=1e-6)
  assert int(state.loss_count) == 2
  assert all(np.isfinite(np.asarray(x)).all() for u in ups for x in jax.tree.leaves(u))
  tx = SCHED.transform(tuned)
  with pytest.raises(ValueError, match=r"loss passed to the optimizer must be a scalar, got "
                                       r"shape \(2,\)"):
    tx.update(_grads(_params()), tx.init(_params()), _params(), loss=jnp.ones(2))


def test_schedule_alone_scales_any_updates_and_passes_others_through():
  theta = SCHEDULE.init(jax.random.key(0))
  theta = dict(theta, b1=jnp.asarray([math.log(3.0)]))  # s = log 3 at every step
  tx = SCHEDULE.scale_by(theta)
  updates = {"f": jnp.ones((2,), jnp.bfloat16), "i": jnp.arange(3), "n": None}
  u, state = tx.update(updates, tx.init(updates))
  assert u["f"].dtype == jnp.bfloat16 and u["n"] is None
  np.testing.assert_allclose(np.asarray(u["f"], np.float32), 3.0, rtol=1e-2)
  np.testing.assert_array_equal(u["i"], np.arange(3))
  assert int(state.count) == 1
  theta = dict(theta, b1=jnp.asarray([50.0]))  # clipped at s = 10
  u, _ = SCHEDULE.scale_by(theta).update({"f": jnp.ones(())}, tx.init(None))
  np.testing.assert_allclose(u["f"], math.exp(10.0), rtol=1e-6)


def test_schedule_config_errors_and_save_load(tmp_path):
  with pytest.raises(ValueError, match="hidden_size must be an int >= 1, got 0"):
    LearnedSchedule(hidden_size=0)
  with pytest.raises(ValueError, match=r"loss_decays must lie in \[0, 1\), got \(1.0,\)"):
    LearnedSchedule(loss_decays=(1.0,))
  with pytest.raises(ValueError, match=r"schedule: meta_params\['w0'\] has shape"):
    SCHEDULE.scale_by(dict(SCHEDULE.init(jax.random.key(0)), w0=jnp.ones((3, 4))))
  theta = _start(SCHED, 7)
  theta["schedule"] = dict(theta["schedule"], w1=theta["schedule"]["w1"] + 0.25)
  path = tmp_path / "sched.safetensors"
  learned_opt.save(path, SCHED, theta)
  lopt2, theta2 = learned_opt.load(path)
  assert lopt2 == SCHED
  a, _ = _run(SCHED, theta, [2.0, 1.0, 1.2])
  b, _ = _run(lopt2, theta2, [2.0, 1.0, 1.2])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
