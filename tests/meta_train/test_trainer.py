"""The outer trainer and the estimator factory: API, determinism, resume, learning, NaN safety."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from meta_train import trainer as trainer_lib
from meta_train.trainer import MetaTrainer, MetaTrainerState, make_estimator
from tasks.quadratic import QuadraticFamily

FAMILY = QuadraticFamily(dim=4, noise_scale=(0.0, 0.05))
LOPT = learned_opt.SGDMomentum(initial_learning_rate=0.01, initial_momentum=0.0)


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def pes_trainer():
  est = make_estimator("pes", num_particles=4, truncation=5, horizon=(10, 30), sigma=0.05)
  return MetaTrainer(LOPT, FAMILY, est, optax.adam(0.05), steps_per_dispatch=4)


def test_state_is_plain_arrays_and_metrics(pes_trainer):
  state = pes_trainer.init(jax.random.key(0))
  assert isinstance(state, MetaTrainerState)
  assert state.key.dtype == jnp.uint32 and state.step.dtype == jnp.int32
  for leaf in jax.tree.leaves(state):
    assert isinstance(leaf, jax.Array)
    assert not jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
  state, metrics = pes_trainer.step(state)
  assert int(state.step) == 4
  for name in ("meta_loss", "grad_norm", "grad_variance", "nonfinite", "inner_steps"):
    assert metrics[name].shape == ()
  assert int(metrics["inner_steps"]) == 4 * 4 * 5  # dispatch x particles x truncation
  assert int(metrics["nonfinite"]) == 0
  assert 0 < float(metrics["meta_loss"]) < 10


def test_same_key_bit_identical_and_resume(pes_trainer):
  a = pes_trainer.init(jax.random.key(1))
  b = pes_trainer.init(jax.random.key(1))
  _assert_trees_equal(a, b)
  a1, ma = pes_trainer.step(a)
  a2, _ = pes_trainer.step(a1)
  # Resume from a host copy (what a checkpoint restores) of the intermediate state.
  restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), a1)
  b2, _ = pes_trainer.step(restored)
  _assert_trees_equal(a2, b2)
  _, mb = pes_trainer.step(b)
  _assert_trees_equal(ma, mb)
  c = pes_trainer.init(jax.random.key(2))
  assert not np.array_equal(c.estimator_state.particles.run_key, a.estimator_state.particles.run_key)


def test_meta_training_raises_a_too_small_learning_rate(pes_trainer):
  state = pes_trainer.init(jax.random.key(3))
  start = float(state.meta_params["log_lr"])
  losses = []
  for _ in range(5):
    state, metrics = pes_trainer.step(state)
    losses.append(float(metrics["meta_loss"]))
  assert float(state.meta_params["log_lr"]) > start + 0.5
  assert losses[-1] < losses[0]


def test_diverging_inner_training_never_reaches_meta_params():
  lopt = learned_opt.SGDMomentum(initial_learning_rate=1e30, initial_momentum=0.0)
  est = make_estimator("tbptt", num_particles=2, truncation=4, horizon=8)
  trainer = MetaTrainer(lopt, FAMILY, est, steps_per_dispatch=2)
  state, metrics = trainer.step(trainer.init(jax.random.key(0)))
  assert int(metrics["nonfinite_loss"]) > 0 and int(metrics["nonfinite_grad"]) > 0
  assert int(metrics["nonfinite"]) == int(metrics["nonfinite_loss"] + metrics["nonfinite_grad"])
  for leaf in jax.tree.leaves(state.meta_params):
    assert np.all(np.isfinite(leaf))
  assert np.isfinite(float(metrics["grad_norm"]))


@pytest.mark.parametrize("name, cls, n", [("tbptt", trainer_lib.TBPTT, 3),
                                          ("es", trainer_lib.TruncatedES, 2),
                                          ("pes", trainer_lib.PES, 2),
                                          ("full_es", trainer_lib.FullES, 2)])
def test_make_estimator(name, cls, n):
  est = make_estimator(name, num_particles=2 * n if name != "tbptt" else n, truncation=5,
                       horizon=40, sigma=0.1, meta_loss="valid")
  assert isinstance(est, cls)
  assert est.unroll.meta_loss == "valid" and est.unroll.max_horizon == 40
  assert est.unroll.truncation_length == (40 if name == "full_es" else 5)
  assert getattr(est, "num_particles", None) == n or getattr(est, "num_pairs", None) == n


@pytest.mark.parametrize("name, kwargs, match", [
    ("adam", {}, "known estimators: tbptt, es, pes, full_es"),
    ("pes", {"num_particles": 3}, "even"),
    ("es", {"num_particles": 0}, "even"),
    ("full_es", {"horizon": (10, 20)}, "fixed"),
    ("tbptt", {"truncation": 30, "horizon": 20}, "must not exceed"),
    ("tbptt", {"num_particles": 0}, "positive"),
    ("tbptt", {"num_pairs": 2}, "not antithetic"),
    ("pes", {"sigma": 0.0}, "sigma"),
    ("pes", {"meta_loss": "test"}, "meta_loss"),
    ("pes", {"horizon": -5}, "horizon"),
    ("pes", {"num_particles": 4, "num_pairs": 3}, "2 \\* num_pairs"),
])
def test_make_estimator_errors(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    make_estimator(name, **kwargs)


def test_unbound_and_rebinding_errors():
  est = make_estimator("pes", num_particles=2)
  with pytest.raises(ValueError, match="bind"):
    est.init(jax.random.key(0), LOPT.init(None))
  bound = est.bind(LOPT, FAMILY)
  with pytest.raises(ValueError, match="already bound"):
    bound.bind(learned_opt.Adam(), FAMILY)
  with pytest.raises(ValueError, match="steps_per_dispatch"):
    MetaTrainer(LOPT, FAMILY, est, steps_per_dispatch=0)
