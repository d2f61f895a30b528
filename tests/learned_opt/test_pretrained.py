"""The pretrained optimizers shipped inside the package, and ``pretrained``'s arguments."""

import importlib
import re
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt

pretrained_module = importlib.import_module("learned_opt.pretrained")

LAM, DECAY = 0.01, 3.0  # the Adam-like start of the test files (learning_rate, decay)


def _quadratic_descends(tx, steps=200):
  target = jnp.array([0.1, -0.2])  # within reach of 200 steps of RMS ~1e-3 (a meta-trained scale)
  loss = lambda p: 0.5 * jnp.sum((p["x"] - target) ** 2)
  params = {"x": jnp.zeros(2)}
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params, loss=value)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return float(loss(params)), float(loss({"x": jnp.zeros(2)}))


def _updates(tx, steps, size=64):
  """The updates of ``tx`` for a fixed stream of random gradients at fixed params, [steps, size]."""
  params = {"w": jnp.linspace(-1.0, 1.0, size)}
  grads = jax.random.normal(jax.random.key(0), (steps, size))

  def step(state, g):
    u, state = tx.update({"w": g}, state, params)
    return state, u["w"]

  return np.asarray(jax.jit(lambda gs: jax.lax.scan(step, tx.init(params), gs)[1])(grads))


def _rms(u):
  return np.sqrt(np.mean(np.square(u), axis=-1))


@pytest.fixture
def shipped(tmp_path, monkeypatch):
  """A package directory with two files: ``aware`` (meta-trained horizon-aware) and ``plain``.

  Both are the untrained Adam-like start (``inits.adam_like(lopt, key, decay=3)``), whose step
  has RMS ``λ exp(-3 t/T)`` over a tensor given ``num_steps = T`` and ``λ`` without; only
  ``aware``'s optimizer is ``horizon_aware``. Their provenance's estimator says the opposite,
  so a test reading it instead of the optimizer's field would fail.
  """
  plain = learned_opt.MLPOptimizer(hidden_sizes=(4, 4))
  aware = learned_opt.MLPOptimizer(hidden_sizes=(4, 4), horizon_aware=True)
  theta = learned_opt.inits.adam_like(plain, jax.random.key(1), learning_rate=LAM, decay=DECAY)
  config = {"optimizer": {"name": "mlp"}, "task": {"family": "quadratic"}}
  learned_opt.save(tmp_path / "aware.safetensors", aware, theta, provenance={
      "producer": "meta-train", "command": "meta-train --preset quickstart",
      "config": {**config, "estimator": {"name": "pes", "horizon_aware": False}}})
  learned_opt.save(tmp_path / "plain.safetensors", plain, theta, provenance={
      "producer": "meta-train", "config": {**config, "estimator": {"name": "pes",
                                                                   "horizon_aware": True}}})
  monkeypatch.setattr(pretrained_module, "_DIR", str(tmp_path))
  monkeypatch.setattr(pretrained_module, "_WARNED", set())
  return tmp_path


# --- the shipped files (whatever they are) --------------------------------------------------


def test_default_is_shipped_and_listed():
  assert "default" in learned_opt.list_pretrained()


def test_pretrained_is_the_shipped_files_optax_transform():
  tx = learned_opt.pretrained(num_steps=100)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  lopt, theta = learned_opt.load_pretrained()
  u = _updates(tx, 5)
  assert np.all(np.isfinite(u)) and np.all(_rms(u) > 0)
  chex.assert_trees_all_close(u, _updates(lopt.transform(theta, num_steps=100), 5), rtol=1e-6)
  # learning_rate multiplies the learned step (optax's two levels).
  half = learned_opt.pretrained(learning_rate=0.5, num_steps=100)
  chex.assert_trees_all_close(_updates(half, 5), 0.5 * u, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("num_steps", [200, None])
@pytest.mark.parametrize("name", learned_opt.list_pretrained())
def test_every_shipped_optimizer_descends_with_and_without_num_steps(name, num_steps):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", learned_opt.NoHorizonWarning)
    tx = learned_opt.pretrained(name, num_steps=num_steps)
  final, start = _quadratic_descends(tx)
  assert np.isfinite(final) and final < 0.5 * start


def test_pretrained_file_says_how_it_was_made():
  info = learned_opt.provenance(learned_opt.pretrained_path("default"))
  assert info["producer"] == "meta-train"
  assert info["outer_step"] > 0
  assert info["config"]["optimizer"]["name"] == learned_opt.load_pretrained()[0].name


@pytest.mark.parametrize("name", learned_opt.list_pretrained())
def test_pretrained_info_reads_the_shipped_provenance(name):
  info = learned_opt.pretrained_info(name)
  prov = learned_opt.provenance(learned_opt.pretrained_path(name))
  assert info.name == name and info.path == learned_opt.pretrained_path(name)
  assert info.architecture == learned_opt.load_pretrained(name)[0].name
  assert info.horizon_aware is bool(prov["config"]["estimator"].get("horizon_aware", False))
  assert info.family == prov["config"]["task"]["family"]
  assert info.command == prov.get("command")
  assert info.provenance == prov


def test_unknown_name_lists_shipped_ones():
  with pytest.raises(ValueError, match="default"):
    learned_opt.pretrained("no-such-optimizer")
  with pytest.raises(ValueError, match="no-such-optimizer"):
    learned_opt.pretrained_info("no-such-optimizer")


# --- num_steps and learning_rate, on files of known behaviour --------------------------------


def test_info_of_test_files(shipped):
  assert learned_opt.list_pretrained() == ["aware", "plain"]
  aware, plain = learned_opt.pretrained_info("aware"), learned_opt.pretrained_info("plain")
  assert aware.horizon_aware and not plain.horizon_aware
  assert aware.architecture == "mlp" and aware.family == "quadratic"
  assert aware.command == "meta-train --preset quickstart" and plain.command is None
  assert aware.path == str(shipped / "aware.safetensors")


def test_horizon_aware_with_num_steps_follows_its_schedule(shipped):
  t_total = 10
  with warnings.catch_warnings():
    warnings.simplefilter("error", learned_opt.NoHorizonWarning)
    tx = learned_opt.pretrained("aware", num_steps=t_total)
  rms = _rms(_updates(tx, t_total))
  expected = LAM * np.exp(-DECAY * np.arange(t_total) / t_total)  # exp(-k t/T), t = 0..T-1
  np.testing.assert_allclose(rms, expected, rtol=1e-3)
  # The same run length as np.int64 (e.g. from a config array) is accepted and identical.
  np.testing.assert_array_equal(
      _updates(learned_opt.pretrained("aware", num_steps=np.int64(t_total)), 3),
      _updates(tx, 3))


def test_horizon_aware_without_num_steps_has_zero_horizon_features_and_warns_once(shipped):
  with pytest.warns(learned_opt.NoHorizonWarning, match=r"'aware'.*num_steps") as record:
    tx = learned_opt.pretrained("aware")
  assert len(record) == 1
  # ψ = (0, 0) at every step: the step keeps its t = 0 size, λ, with no decay.
  np.testing.assert_allclose(_rms(_updates(tx, 10)), np.full(10, LAM), rtol=1e-3)
  with warnings.catch_warnings():  # once per name and process
    warnings.simplefilter("error", learned_opt.NoHorizonWarning)
    learned_opt.pretrained("aware")
    learned_opt.pretrained("plain")  # not horizon-aware: nothing to warn about


def test_num_steps_is_ignored_by_an_optimizer_not_meta_trained_with_it(shipped):
  with warnings.catch_warnings():
    warnings.simplefilter("error", learned_opt.NoHorizonWarning)
    with_n = _updates(learned_opt.pretrained("plain", num_steps=10), 10)
    without = _updates(learned_opt.pretrained("plain"), 10)
  np.testing.assert_array_equal(with_n, without)
  np.testing.assert_allclose(_rms(with_n), np.full(10, LAM), rtol=1e-3)


@pytest.mark.parametrize("name", ["aware", "plain"])
def test_learning_rate_scales_every_update_linearly(shipped, name):
  base = _updates(learned_opt.pretrained(name, num_steps=8), 8)
  half = _updates(learned_opt.pretrained(name, 0.5, num_steps=8), 8)
  np.testing.assert_array_equal(half, 0.5 * base)  # a power of two: exact
  tripled = _updates(learned_opt.pretrained(name, learning_rate=3.0, num_steps=8), 8)
  np.testing.assert_allclose(tripled, 3.0 * base, rtol=1e-6)
  schedule = lambda count: 1.0 / (count + 1.0)  # a schedule, on top of the learned step
  scheduled = _updates(learned_opt.pretrained(name, schedule, num_steps=8), 8)
  np.testing.assert_allclose(scheduled, base / np.arange(1, 9)[:, None], rtol=1e-6)


def test_learning_rate_is_injectable(shipped):
  tx = optax.inject_hyperparams(learned_opt.pretrained, static_args=("num_steps",))(
      "aware", learning_rate=1.0, num_steps=8)
  params = {"w": jnp.linspace(-1.0, 1.0, 64)}
  grads = {"w": jax.random.normal(jax.random.key(0), (64,))}
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(0.25)
  u, _ = tx.update(grads, state, params)
  ref = _updates(learned_opt.pretrained("aware", num_steps=8), 1)[0]
  np.testing.assert_allclose(np.asarray(u["w"]), 0.25 * ref, rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -5, 2.5, 100.0, True, "100", [100]])
def test_bad_num_steps_is_a_clear_error(bad):
  with pytest.raises(ValueError, match=r"num_steps must be a positive int .* got " +
                     re.escape(repr(bad)) + r" \(\w+\)$"):
    learned_opt.pretrained("default", num_steps=bad)


def test_num_steps_injected_as_a_hyperparameter_says_to_make_it_static():
  tx = optax.inject_hyperparams(learned_opt.pretrained)("default", num_steps=100)
  with pytest.raises(ValueError, match=r"got Array\(100.*static_args=\('num_steps',\)"):
    tx.init({"w": jnp.ones(3)})
