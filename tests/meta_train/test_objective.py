"""The meta-objective's terms (meta_train/objective.py), against values worked by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_train import objective
from meta_train import unroll as ul
import tasks

# A run of five steps, then a new run of three: losses and the fraction t/T of each step.
LOSSES = np.array([4.0, 2.0, 3.0, 1.0, 5.0, 6.0, 2.0, 7.0], np.float32)
RUN_START = np.array([0, 0, 0, 0, 0, 1, 0, 0], bool)  # the unroll began mid-run
FRACTION = np.array([0.5, 0.6, 0.7, 0.8, 1.0, 1 / 3, 2 / 3, 1.0], np.float32)


def _scan(term, losses=LOSSES):
  """The term over the steps in a lax.scan, as the unroll applies it."""
  def body(carry, xs):
    value, start, frac = xs
    value, carry = term.apply(value, carry, objective.StepContext(start, frac))
    return carry, value
  _, out = jax.lax.scan(body, term.init(), (jnp.asarray(losses), RUN_START, FRACTION))
  return np.asarray(out, np.float64)


def test_rise_penalty_adds_the_rise_over_the_runs_lowest_earlier_loss():
  # Lowest earlier loss of the same run in the unroll: -, 4, 2, 2, 1 | -, 6, 2.
  rise = np.array([0, 0, 1, 0, 4, 0, 0, 5], np.float64)
  np.testing.assert_allclose(_scan(objective.rise_penalty(0.5)), LOSSES + 0.5 * rise)
  np.testing.assert_allclose(_scan(objective.rise_penalty(0.0)), LOSSES)


def test_end_weight_weights_each_step_by_its_run_fraction():
  p = 2.0
  np.testing.assert_allclose(_scan(objective.end_weight(p)),
                             LOSSES * (p + 1) * FRACTION.astype(np.float64) ** p, rtol=1e-6)
  np.testing.assert_allclose(_scan(objective.end_weight(0.0)), LOSSES)


def test_log_loss_counts_negative_losses_as_zero():
  losses = np.array([1.0, np.e, 0.0, -3.0, 0.5, 1.0, 1.0, 1.0], np.float32)
  out = _scan(objective.log_loss(), losses)
  np.testing.assert_allclose(out[:2], [0.0, 1.0], atol=1e-6)
  np.testing.assert_allclose(out[2:4], np.log(objective.LOG_EPS), rtol=1e-6)
  np.testing.assert_allclose(out[4], np.log(0.5), rtol=1e-6)


def test_chain_applies_terms_in_order_and_keeps_each_terms_carry():
  # log, then the rise of the logs, then the end weights: the order from_config uses.
  logs = np.log(LOSSES.astype(np.float64))
  low = [np.inf, logs[0], logs[1], logs[1], logs[3], np.inf, logs[5], logs[6]]
  penalised = logs + 2.0 * np.maximum(logs - np.array(low), 0.0)
  expected = penalised * 2.0 * FRACTION
  term = objective.chain(objective.log_loss(), objective.rise_penalty(2.0),
                         objective.end_weight(1.0))
  np.testing.assert_allclose(_scan(term), expected, rtol=1e-5)
  # Reversed, the weights come before the log: a different objective.
  reversed_term = objective.chain(objective.end_weight(1.0), objective.rise_penalty(2.0),
                                  objective.log_loss())
  assert not np.allclose(_scan(reversed_term), expected)
  config = ul.UnrollConfig(log_meta_loss=True, rise_penalty=2.0, end_weight=1.0)
  np.testing.assert_allclose(_scan(objective.from_config(config)), expected, rtol=1e-5)
  # The defaults give the identity and carry nothing.
  plain = objective.from_config(ul.UnrollConfig())
  assert plain.init() == ()
  np.testing.assert_array_equal(_scan(plain), LOSSES)


def test_normalised_clips_and_counts_nonfinite_losses():
  family = tasks.QuadraticFamily(dim=2)
  task = family.task(family.sample(jax.random.key(0)))
  raw = jnp.float32(3.0)
  norm, bad = objective.normalised(task, raw)
  assert float(norm) == pytest.approx(float(task.normalizer(raw))) and int(bad) == 0
  clip = 0.5 * float(task.normalizer(raw))
  norm, bad = objective.normalised(task, raw, clip)
  assert float(norm) == pytest.approx(clip) and int(bad) == 0
  for value in (jnp.nan, jnp.inf):
    norm, bad = objective.normalised(task, jnp.float32(value))
    assert float(norm) == task.ceiling and int(bad) == 1
    norm, bad = objective.normalised(task, jnp.float32(value), clip)
    assert float(norm) == pytest.approx(min(clip, task.ceiling)) and int(bad) == 1
