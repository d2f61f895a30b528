"""The outer trainer and the estimator registry: API, determinism, resume, learning, NaN safety."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from meta_train.errors import FieldError
from meta_train.estimators import registry
from meta_train.estimators.full_es import FullES
from meta_train.estimators.pes import PES
from meta_train.estimators.registry import make_estimator
from meta_train.estimators.tbptt import TBPTT
from meta_train.estimators.truncated_es import TruncatedES
from meta_train.trainer import MetaTrainer, MetaTrainerState
from meta_train.unroll import UnrollConfig
from tasks.quadratic import QuadraticFamily

FAMILY = QuadraticFamily(dim=4, noise_scale=(0.0, 0.05))
LOPT = learned_opt.SGDMomentum(initial_learning_rate=0.01, initial_momentum=0.0)


_assert_trees_equal = chex.assert_trees_all_equal


@pytest.fixture(scope="module")
def pes_trainer():
  est = make_estimator("pes", LOPT, FAMILY, num_pairs=2, truncation_length=5, min_horizon=10,
                       max_horizon=30, sigma=0.05)
  return MetaTrainer(est, optax.adam(0.05), steps_per_dispatch=4)


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
  est = make_estimator("tbptt", lopt, FAMILY, num_particles=2, truncation_length=4,
                       min_horizon=8, max_horizon=8)
  trainer = MetaTrainer(est, steps_per_dispatch=2)
  state, metrics = trainer.step(trainer.init(jax.random.key(0)))
  assert int(metrics["nonfinite_loss"]) > 0 and int(metrics["nonfinite_grad"]) > 0
  assert int(metrics["nonfinite"]) == int(metrics["nonfinite_loss"] + metrics["nonfinite_grad"])
  for leaf in jax.tree.leaves(state.meta_params):
    assert np.all(np.isfinite(leaf))
  assert np.isfinite(float(metrics["grad_norm"]))


_UNROLL = ("truncation_length", "min_horizon", "max_horizon", "meta_loss", "log_meta_loss",
           "end_weight", "stagger", "horizon_aware", "param_scale", "loss_clip", "rise_penalty")


@pytest.mark.parametrize("name, cls, own", [("tbptt", TBPTT, {"num_particles": 3}),
                                            ("es", TruncatedES, {"num_pairs": 2, "sigma": 0.1,
                                                                    "sign_delta": 0.0}),
                                            ("pes", PES, {"num_pairs": 2, "sigma": 0.1, "sign_delta": 1.0}),
                                            ("full_es", FullES, {"num_pairs": 2, "sigma": 0.1,
                                                                      "sign_delta": 0.5})])
def test_make_estimator(name, cls, own):
  assert registry.ESTIMATORS[name] is cls and cls.name == name
  whole = name == "full_es"  # one unroll of the whole horizon: no truncation, no stagger
  unroll = tuple(f for f in _UNROLL if not (whole and f in ("truncation_length", "stagger")))
  if whole:  # ... and a final loss to recompute
    unroll = unroll[:unroll.index("end_weight") + 1] + ("final_batches",) + unroll[
        unroll.index("end_weight") + 1:]
  assert registry.estimator_fields(name) == unroll + tuple(own)
  truncation = {} if whole else {"truncation_length": 5}
  est = make_estimator(name, LOPT, FAMILY, min_horizon=40, max_horizon=40, meta_loss="valid",
                       **truncation, **own)
  assert type(est) is cls and est.lopt is LOPT and est.family is FAMILY
  assert est.unroll == UnrollConfig(truncation_length=40 if whole else 5, min_horizon=40,
                                    max_horizon=40, meta_loss="valid", stagger=not whole)
  assert {k: getattr(est, k) for k in own} == own
  assert est == cls(LOPT, FAMILY, est.unroll, **own)


_PES_FIELDS = ", ".join(_UNROLL + ("num_pairs", "sigma", "sign_delta"))


@pytest.mark.parametrize("name, kwargs, message", [
    ("adam", {}, "unknown estimator 'adam'; known estimators: tbptt, es, pes, full_es"),
    ("tbptt", {"num_pairs": 2}, "estimator 'tbptt' has no field 'num_pairs'; its fields: "
                                + ", ".join(_UNROLL + ("num_particles",))),
    ("pes", {"truncation": 5}, f"estimator 'pes' has no field 'truncation'; its fields: "
                               f"{_PES_FIELDS}"),
    ("pes", {"num_particles": 4}, f"estimator 'pes' has no field 'num_particles'; its fields: "
                                  f"{_PES_FIELDS}"),
    ("pes", {"num_pairs": 0}, "PES.num_pairs: must be > 0, got 0"),
    ("es", {"num_pairs": 1.5}, "TruncatedES.num_pairs: must be an int, got 1.5"),
    ("full_es", {"min_horizon": 10, "max_horizon": 20},
     "FullES.min_horizon: full_es unrolls one fixed horizon: must equal max_horizon (20), got 10"),
    ("full_es", {"truncation_length": 5, "min_horizon": 20, "max_horizon": 20},
     "estimator 'full_es' has no field 'truncation_length'; its fields: min_horizon, max_horizon, "
     "meta_loss, log_meta_loss, end_weight, final_batches, horizon_aware, param_scale, loss_clip, "
     "rise_penalty, num_pairs, sigma, sign_delta"),
    ("full_es", {"stagger": False}, "estimator 'full_es' has no field 'stagger'; its fields: "
                                    "min_horizon, max_horizon, meta_loss, log_meta_loss, "
                                    "end_weight, final_batches, horizon_aware, param_scale, "
                                    "loss_clip, rise_penalty, num_pairs, sigma, sign_delta"),
    ("tbptt", {"truncation_length": 30, "min_horizon": 20, "max_horizon": 20},
     "UnrollConfig.truncation_length: must not exceed min_horizon (20), got 30"),
    ("tbptt", {"num_particles": 0}, "TBPTT.num_particles: must be > 0, got 0"),
    ("pes", {"sigma": 0.0}, "PES.sigma: must be > 0, got 0.0"),
    ("pes", {"meta_loss": "test"},
     "UnrollConfig.meta_loss: must be one of ['train', 'valid'], got 'test'"),
    ("pes", {"max_horizon": -5}, "UnrollConfig.max_horizon: must be > 0, got -5"),
])
def test_make_estimator_errors(name, kwargs, message):
  with pytest.raises(ValueError) as e:
    make_estimator(name, LOPT, FAMILY, **kwargs)
  assert str(e.value) == message


def test_full_es_unrolls_its_whole_horizon_whatever_its_length():
  est = make_estimator("full_es", LOPT, FAMILY, min_horizon=7, max_horizon=7)
  assert (est.unroll.truncation_length, est.unroll.stagger, est.horizon) == (7, False, 7)


def test_estimators_are_complete_when_constructed():
  with pytest.raises(FieldError) as e:
    PES(None, FAMILY)
  assert (e.value.field, str(e.value)) == ("lopt", "PES.lopt: is required, got None")
  with pytest.raises(TypeError, match="family"):
    TBPTT(LOPT)  # pylint: disable=no-value-for-parameter
  est = make_estimator("pes", LOPT, FAMILY, num_pairs=1)
  trainer = MetaTrainer(est)
  assert trainer.estimator is est and trainer.lopt is LOPT and trainer.family is FAMILY
  with pytest.raises(ValueError, match="^steps_per_dispatch must be a positive int, got 0$"):
    MetaTrainer(est, steps_per_dispatch=0)
