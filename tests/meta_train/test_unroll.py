"""Truncated unrolls: parity with a hand-written loop, resets, staggering, common random numbers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from meta_train import errors
from meta_train import objective
from meta_train import unroll as ul
from tasks import base as task_base
from tasks.quadratic import QuadraticFamily

FAMILY = QuadraticFamily(dim=3, noise_scale=(0.0, 0.0))
NOISY = QuadraticFamily(dim=3, noise_scale=(0.5, 1.0))
LOPT = learned_opt.SGDMomentum(initial_learning_rate=0.1, initial_momentum=0.5)
THETA = LOPT.init(jax.random.key(0))
CONFIG = ul.UnrollConfig(truncation_length=4, min_horizon=6, max_horizon=6, stagger=False)


def _unroll_fn(family, config):
  return jax.jit(lambda mp, ps: ul.unroll(LOPT, family, config, mp, ps))


@pytest.fixture(scope="module")
def unroll_clean():
  return _unroll_fn(FAMILY, CONFIG)


def test_matches_hand_written_sgd_momentum_loop(unroll_clean):
  ps = ul.fresh_particle(LOPT, FAMILY, CONFIG, THETA, ul.key_data(jax.random.key(3)))
  new_ps, out = unroll_clean(THETA, ps)
  task = FAMILY.task(ps.task_params)
  x, m = ps.params["x"], jnp.zeros(3)
  ref = 0.5 * task.init_scale**2 * jnp.trace(task.hessian)
  expected = []
  for _ in range(4):
    expected.append(task.exact_loss({"x": x}) / ref)
    m = 0.5 * m + task.exact_grad({"x": x})["x"]
    x = x - 0.1 * m
  np.testing.assert_allclose(out.losses, np.array(expected), rtol=1e-5)
  np.testing.assert_allclose(new_ps.params["x"], x, rtol=1e-5)
  np.testing.assert_allclose(new_ps.opt_state[0].mu["x"], m, rtol=1e-5)
  assert int(new_ps.step) == 4 and not bool(out.reset)
  np.testing.assert_allclose(out.meta_loss, np.mean(expected), rtol=1e-5)


def test_reset_to_fresh_task_at_horizon(unroll_clean):
  rk = ul.key_data(jax.random.key(5))
  ps = ul.fresh_particle(LOPT, FAMILY, CONFIG, THETA, rk)
  ps, out1 = unroll_clean(THETA, ps)
  ps, out2 = unroll_clean(THETA, ps)
  assert not bool(out1.reset) and bool(out2.reset)
  # Horizon 6: steps 4, 5 of the first run, then steps 0, 1 of the next run.
  np.testing.assert_array_equal(out2.after_reset, [False, False, True, True])
  assert int(ps.step) == 2
  nxt = ul.fresh_particle(LOPT, FAMILY, CONFIG, THETA, ul.next_run_key(rk))
  np.testing.assert_array_equal(ps.run_key, nxt.run_key)
  np.testing.assert_array_equal(ps.task_params["eigenvalues"], nxt.task_params["eigenvalues"])
  # The first loss after the reset is the fresh run's initial loss (normalised).
  task = FAMILY.task(nxt.task_params)
  ref = 0.5 * task.init_scale**2 * jnp.trace(task.hessian)
  np.testing.assert_allclose(out2.losses[2], task.exact_loss(nxt.params) / ref, rtol=1e-5)


def test_antithetic_members_share_tasks_and_data():
  config = dataclasses.replace(CONFIG, truncation_length=5, min_horizon=5, max_horizon=5)
  fn = _unroll_fn(NOISY, config)
  rk = ul.key_data(jax.random.key(9))
  ps = ul.fresh_particle(LOPT, NOISY, config, THETA, rk)
  _, a = fn(THETA, ps)
  _, b = fn(THETA, ps)
  np.testing.assert_array_equal(a.losses, b.losses)  # same key: same data, bit for bit
  other = ul.fresh_particle(LOPT, NOISY, config, THETA, ul.key_data(jax.random.key(10)))
  _, c = fn(THETA, other)
  assert not np.allclose(a.losses, c.losses)
  # A perturbed θ on the same run changes losses smoothly (common random numbers).
  _, d = fn(jax.tree.map(lambda t: t + 1e-3, THETA), ps)
  assert 0 < np.max(np.abs(np.asarray(d.losses) - np.asarray(a.losses))) < 1e-2


def test_valid_meta_loss_is_exact_loss_after_each_step():
  config = dataclasses.replace(CONFIG, meta_loss="valid", truncation_length=3)
  ps = ul.fresh_particle(LOPT, NOISY, config, THETA, ul.key_data(jax.random.key(2)))
  new_ps, out = _unroll_fn(NOISY, config)(THETA, ps)
  task = NOISY.task(ps.task_params)
  ref = 0.5 * task.init_scale**2 * jnp.trace(task.hessian)
  np.testing.assert_allclose(out.losses[-1], task.exact_loss(new_ps.params) / ref, rtol=1e-5)


class _KeyTask(task_base.Task):
  """A quadratic whose batches are the raw data of the key that drew them."""

  def __init__(self, inner):
    self.inner = inner

  def init(self, key):
    return self.inner.init(key)

  def loss(self, params, key, batch):
    return self.inner.loss(params, key, batch)

  def sample_batch(self, key, split="train"):
    return ul.key_data(key)


class _KeyFamily(task_base.TaskFamily):

  def sample(self, key):
    return FAMILY.sample(key)

  def task(self, task_params):
    return _KeyTask(FAMILY.task(task_params))


def _step_keys(meta_loss):
  config = dataclasses.replace(CONFIG, meta_loss=meta_loss, truncation_length=3)
  rk = ul.key_data(jax.random.key(4))
  ps = ul.fresh_particle(LOPT, _KeyFamily(), config, THETA, rk)
  return rk, ul.draw_truncation(_KeyFamily(), config, ps).data


def test_each_step_draws_separate_batch_and_loss_streams():
  rk, (train_batch, train_loss, valid_batch, valid_loss) = _step_keys("valid")
  keys = np.concatenate([train_batch, train_loss, valid_batch, valid_loss])
  assert keys.shape == (12, 2)
  assert len({tuple(k) for k in keys.tolist()}) == 12  # 3 steps x 4 streams, all different
  for s in range(3):
    assert not np.array_equal(valid_batch[s], valid_loss[s])


def test_train_meta_loss_streams_keep_their_layout():
  # Train batch and train loss keys of step s are fold_in(run_key, 4 + 3 s + role): the layout
  # the "train" meta-loss has always used (its meta-losses stay bit-identical), shared by the
  # "valid" meta-loss.
  rk, (train_batch, train_loss, valid_batch, valid_loss) = _step_keys("train")
  assert valid_batch is None and valid_loss is None
  for s in range(3):
    for role, got in ((0, train_batch), (1, train_loss)):
      key = jax.random.fold_in(jax.random.wrap_key_data(rk), 4 + 3 * s + role)
      want = jax.random.key_data(key)
      np.testing.assert_array_equal(got[s], want)
  _, (valid_train_batch, valid_train_loss, _, _) = _step_keys("valid")
  np.testing.assert_array_equal(valid_train_batch, train_batch)
  np.testing.assert_array_equal(valid_train_loss, train_loss)


def test_stagger_and_horizons():
  config = ul.UnrollConfig(truncation_length=4, min_horizon=10, max_horizon=1000, stagger=True)
  ps = ul.init_particles(LOPT, FAMILY, config, THETA, jax.random.key(0), 256)
  h, s = np.asarray(ps.horizon), np.asarray(ps.step)
  assert h.min() >= 10 and h.max() <= 1000
  assert np.all((0 <= s) & (s < h))
  # Log-uniform: about half of the horizons fall below the geometric mean (100).
  assert 0.35 < np.mean(h < 100) < 0.65
  assert len(np.unique(s)) > 100
  assert ps.run_key.dtype == jnp.uint32 and len(np.unique(ps.run_key[:, -1])) == 256
  fixed = ul.init_particles(LOPT, FAMILY, CONFIG, THETA, jax.random.key(0), 4)
  np.testing.assert_array_equal(fixed.step, 0)
  np.testing.assert_array_equal(fixed.horizon, 6)


def test_nonfinite_losses_are_replaced_and_counted():
  lopt = learned_opt.SGDMomentum(initial_learning_rate=1e30, initial_momentum=0.0)
  theta = lopt.init(None)
  config = dataclasses.replace(CONFIG, truncation_length=6)
  ps = ul.fresh_particle(lopt, FAMILY, config, theta, ul.key_data(jax.random.key(1)))
  _, out = jax.jit(lambda mp, p: ul.unroll(lopt, FAMILY, config, mp, p))(theta, ps)
  losses = np.asarray(out.losses)
  assert np.all(np.isfinite(losses))
  assert int(out.nonfinite) >= 3
  assert np.sum(losses == 10.0) >= int(out.nonfinite)  # the quadratic's ceiling


@pytest.mark.parametrize("kwargs, field, message", [
    ({"truncation_length": 0}, "truncation_length", "must be > 0, got 0"),
    ({"max_horizon": 2.5}, "max_horizon", "must be an int, got 2.5"),
    ({"truncation_length": 8, "min_horizon": 5, "max_horizon": 9}, "truncation_length",
     "must not exceed min_horizon (5), got 8"),
    ({"min_horizon": 50, "max_horizon": 40}, "min_horizon",
     "must not exceed max_horizon (40), got 50"),
    ({"meta_loss": "test"}, "meta_loss", "must be one of ['train', 'valid'], got 'test'"),
])
def test_config_validation(kwargs, field, message):
  with pytest.raises(errors.FieldError) as info:
    ul.UnrollConfig(**kwargs)
  assert (info.value.owner, info.value.field, info.value.message) == ("UnrollConfig", field,
                                                                      message)
  assert str(info.value) == f"UnrollConfig.{field}: {message}"


@dataclasses.dataclass(frozen=True)
class _HorizonSGD(learned_opt.LearnedOptimizer):
  """SGD whose rate is ``θ · num_steps`` (``θ`` without a horizon): shows what the unroll passes."""

  name = "horizon_sgd_test"

  def init(self, key):
    del key
    return jnp.asarray(0.01, jnp.float32)

  def scale_by(self, meta_params, *, num_steps=None):
    rate = meta_params * (1.0 if num_steps is None else num_steps)

    def update(updates, state, params=None, **_):
      return jax.tree.map(lambda g: -rate * g, updates), state

    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)


def test_horizon_aware_unroll_passes_each_runs_horizon_as_num_steps():
  lopt = _HorizonSGD()
  theta = lopt.init(None)
  config = ul.UnrollConfig(truncation_length=8, min_horizon=8, max_horizon=60, stagger=False,
                           horizon_aware=True)
  rk = ul.key_data(jax.random.key(2))
  ps = ul.fresh_particle(lopt, FAMILY, config, theta, rk)
  nxt = ul.fresh_particle(lopt, FAMILY, config, theta, ul.next_run_key(rk))
  # Advance to 3 steps before the end of the first run, then unroll across the reset.
  ps = ps._replace(step=ps.horizon - 3)
  assert int(ps.horizon) != int(nxt.horizon)
  new_ps, out = jax.jit(lambda mp, p: ul.unroll(lopt, FAMILY, config, mp, p))(theta, ps)
  assert bool(out.reset) and int(new_ps.step) == 5
  x = nxt.params["x"]
  task = FAMILY.task(nxt.task_params)
  for _ in range(5):  # the fresh run's steps use the fresh run's horizon
    x = x - 0.01 * float(nxt.horizon) * task.exact_grad({"x": x})["x"]
  np.testing.assert_allclose(new_ps.params["x"], x, rtol=1e-5)
  # Without horizon_aware the same unroll uses num_steps=None (rate θ).
  plain = dataclasses.replace(config, horizon_aware=False)
  plain_ps, _ = ul.unroll(lopt, FAMILY, plain, theta, ps)
  x = nxt.params["x"]
  for _ in range(5):
    x = x - 0.01 * task.exact_grad({"x": x})["x"]
  np.testing.assert_allclose(plain_ps.params["x"], x, rtol=1e-5)


def test_param_scale_augmentation_is_a_reparametrisation():
  config = dataclasses.replace(CONFIG, param_scale=10.0)
  rk = ul.key_data(jax.random.key(3))
  plain = ul.fresh_particle(LOPT, FAMILY, CONFIG, THETA, rk)
  ps = ul.fresh_particle(LOPT, FAMILY, config, THETA, rk)
  s = ul.param_scales(config, plain.params, rk)["x"]
  assert 0.1 <= float(s) <= 10.0 and abs(float(s) - 1.0) > 1e-3
  assert ul.param_scales(CONFIG, plain.params, rk) is None
  np.testing.assert_allclose(ps.params["x"], plain.params["x"] / s, rtol=1e-6)
  new_ps, out = jax.jit(lambda mp, p: ul.unroll(LOPT, FAMILY, config, mp, p))(THETA, ps)
  # SGD with momentum on q = p / s: the loss is f(s q), the gradient s ∇f(s q).
  task = FAMILY.task(ps.task_params)
  ref = 0.5 * task.init_scale**2 * jnp.trace(task.hessian)
  q, m, expected = ps.params["x"], jnp.zeros(3), []
  for _ in range(4):
    expected.append(task.exact_loss({"x": s * q}) / ref)
    m = 0.5 * m + s * task.exact_grad({"x": s * q})["x"]
    q = q - 0.1 * m
  np.testing.assert_allclose(out.losses, np.array(expected), rtol=1e-5)
  np.testing.assert_allclose(out.losses[0], task.exact_loss(plain.params) / ref, rtol=1e-5)
  np.testing.assert_allclose(new_ps.params["x"], q, rtol=1e-5)
  with pytest.raises(errors.FieldError, match=r"param_scale: must be >= 1 \(1 disables the "
                                              r"augmentation\), got 0.5"):
    ul.UnrollConfig(param_scale=0.5)


def test_unroll_passes_each_steps_train_loss_to_the_optimizer():
  # An MLP optimizer with a learned schedule keeps moving averages of the loss it is given:
  # after 4 steps they must be those of the 4 train losses (here the normalised meta-losses
  # times the quadratic's reference loss).
  lopt = learned_opt.chain(
      learned_opt.MLPOptimizer(hidden_sizes=(4,), time_scales=(1.0,)),
      learned_opt.LearnedSchedule(hidden_size=2, time_scales=(1.0,), loss_decays=(0.5,)))
  theta = learned_opt.inits.adam_like(lopt, jax.random.key(0))
  ps = ul.fresh_particle(lopt, FAMILY, CONFIG, theta, ul.key_data(jax.random.key(3)))
  new_ps, out = jax.jit(lambda mp, p: ul.unroll(lopt, FAMILY, CONFIG, mp, p))(theta, ps)
  task = FAMILY.task(ps.task_params)
  losses = np.asarray(out.losses) * float(0.5 * task.init_scale**2 * jnp.trace(task.hessian))
  schedule = new_ps.opt_state[0][1]  # the chain's state: (rule's, schedule's)
  ema = 0.0
  for loss in losses:
    ema = 0.5 * ema + 0.5 * loss
  assert int(schedule.loss_count) == 4
  np.testing.assert_allclose(schedule.initial_loss, losses[0], rtol=1e-5)
  np.testing.assert_allclose(schedule.loss_emas, [ema], rtol=1e-5)


def test_log_meta_loss_is_the_log_of_each_steps_normalised_loss():
  # The same particle unrolled twice: the log variant's per-step losses are log(max(ℓ̂, 0) +
  # 1e-8) of the plain ones (a noisy quadratic's train loss can be negative), its meta-loss
  # their mean, and the inner run itself is unchanged.
  for meta_loss in ("train", "valid"):
    plain = dataclasses.replace(CONFIG, meta_loss=meta_loss)
    logged = dataclasses.replace(plain, log_meta_loss=True)
    ps = ul.fresh_particle(LOPT, NOISY, plain, THETA, ul.key_data(jax.random.key(5)))
    new_a, out_a = _unroll_fn(NOISY, plain)(THETA, ps)
    new_b, out_b = _unroll_fn(NOISY, logged)(THETA, ps)
    expected = np.log(np.maximum(np.asarray(out_a.losses, np.float64), 0.0)
                      + objective.LOG_EPS)
    np.testing.assert_allclose(out_b.losses, expected, rtol=1e-5)
    np.testing.assert_allclose(out_b.meta_loss, expected.mean(), rtol=1e-5)
    np.testing.assert_array_equal(new_a.params["x"], new_b.params["x"])


def test_end_weight_scales_each_steps_loss_by_its_run_fraction():
  # Horizon 6, truncations of 4: the first unroll holds steps t = 1..4 of its run, the second
  # t = 5, 6 and then t = 1, 2 of the next run. Each loss is weighted (p + 1) (t / 6)^p and the
  # inner run itself is unchanged.
  p = 2.0
  weighted = dataclasses.replace(CONFIG, end_weight=p)
  ps = ul.fresh_particle(LOPT, NOISY, CONFIG, THETA, ul.key_data(jax.random.key(5)))
  for t in ([1, 2, 3, 4], [5, 6, 1, 2]):
    new_a, out_a = _unroll_fn(NOISY, CONFIG)(THETA, ps)
    new_b, out_b = _unroll_fn(NOISY, weighted)(THETA, ps)
    w = (p + 1) * (np.asarray(t) / 6.0) ** p
    np.testing.assert_allclose(out_b.losses, w * np.asarray(out_a.losses), rtol=1e-6)
    np.testing.assert_allclose(out_b.meta_loss, np.mean(w * np.asarray(out_a.losses)), rtol=1e-6)
    np.testing.assert_array_equal(new_a.params["x"], new_b.params["x"])
    ps = new_a
  with pytest.raises(errors.FieldError, match="end_weight: must be a number in"):
    ul.UnrollConfig(end_weight=-1.0)


def test_rise_penalty_adds_each_steps_rise_over_the_runs_lowest_earlier_loss():
  # Horizon 6, truncations of 4: the first unroll holds steps 1..4 of a run, the second steps
  # 5, 6 of it and steps 1, 2 of the next. Worked by hand from the plain losses ℓ: step i pays
  # ℓ_i + λ max(0, ℓ_i - min of the same run's earlier losses in this truncation), nothing at a
  # truncation's or a run's first step; the inner run itself is unchanged.
  lam = 0.5
  penalised = dataclasses.replace(CONFIG, rise_penalty=lam)
  ps = ul.fresh_particle(LOPT, NOISY, CONFIG, THETA, ul.key_data(jax.random.key(5)))
  saw_rise = False
  for runs in ([[0, 1, 2, 3]], [[0, 1], [2, 3]]):
    new_a, out_a = _unroll_fn(NOISY, CONFIG)(THETA, ps)
    new_b, out_b = _unroll_fn(NOISY, penalised)(THETA, ps)
    plain = np.asarray(out_a.losses, np.float64)
    expected = plain.copy()
    for run in runs:
      for j, i in enumerate(run[1:], 1):
        rise = max(0.0, plain[i] - min(plain[k] for k in run[:j]))
        saw_rise |= rise > 0
        expected[i] += lam * rise
    np.testing.assert_allclose(out_b.losses, expected, rtol=1e-6)
    np.testing.assert_allclose(out_b.meta_loss, expected.mean(), rtol=1e-6)
    np.testing.assert_array_equal(new_a.params["x"], new_b.params["x"])
    ps = new_a
  assert saw_rise  # the noisy quadratic's losses do rise somewhere: the term was exercised
  for bad in (-0.1, float("inf"), True, "1"):
    with pytest.raises(errors.FieldError, match="rise_penalty: must be a finite number >= 0"):
      ul.UnrollConfig(rise_penalty=bad)
  with pytest.raises(errors.FieldError, match="rise_penalty: penalises rises between"):
    ul.UnrollConfig(final_batches=2, rise_penalty=1.0)


def test_loss_clip_clips_each_steps_normalised_loss_and_counts_nonfinite_as_the_clip():
  # The same particle unrolled with and without loss_clip: each step's normalised loss is
  # min(ℓ̂, c), the meta-loss their mean, the inner run itself unchanged.
  ps = ul.fresh_particle(LOPT, NOISY, CONFIG, THETA, ul.key_data(jax.random.key(5)))
  new_a, out_a = _unroll_fn(NOISY, CONFIG)(THETA, ps)
  plain = np.asarray(out_a.losses, np.float64)
  c = float(np.median(plain))
  assert plain.min() < c < plain.max()
  clipped = dataclasses.replace(CONFIG, loss_clip=c)
  new_b, out_b = _unroll_fn(NOISY, clipped)(THETA, ps)
  np.testing.assert_allclose(out_b.losses, np.minimum(plain, c), rtol=1e-6)
  np.testing.assert_allclose(out_b.meta_loss, np.minimum(plain, c).mean(), rtol=1e-6)
  np.testing.assert_array_equal(new_a.params["x"], new_b.params["x"])
  # A non-finite raw loss is the clip (below the ceiling), and counted.
  task = NOISY.task(ps.task_params)
  norm, bad = objective.normalised(task, jnp.float32(jnp.nan), 1.3)
  assert float(norm) == pytest.approx(1.3) and int(bad) == 1
  norm, bad = objective.normalised(task, jnp.float32(jnp.nan))
  assert float(norm) == task.ceiling and int(bad) == 1
  for bad_clip in (-1.0, float("inf"), True):
    with pytest.raises(errors.FieldError, match="loss_clip: must be a finite number >= 0"):
      ul.UnrollConfig(loss_clip=bad_clip)


def test_final_batches_make_the_meta_loss_the_final_loss_recomputed_on_fresh_batches():
  # One whole run of 6 steps in one unroll (full-horizon ES's unroll). With final_batches=3 the
  # meta-loss is the final parameters' normalised train loss averaged over 3 fresh batches of the
  # run's own stream; the per-step losses and the inner run are unchanged.
  whole = ul.UnrollConfig(truncation_length=6, min_horizon=6, max_horizon=6, stagger=False,
                          meta_loss="train")
  final = dataclasses.replace(whole, final_batches=3)
  ps = ul.fresh_particle(LOPT, NOISY, whole, THETA, ul.key_data(jax.random.key(7)))
  new_a, out_a = _unroll_fn(NOISY, whole)(THETA, ps)
  new_b, out_b = _unroll_fn(NOISY, final)(THETA, ps)
  np.testing.assert_array_equal(out_a.losses, out_b.losses)
  np.testing.assert_array_equal(new_a.params["x"], new_b.params["x"])  # reset to the next run
  # The run's last parameters: the same run, one step longer, is not reset after 6 steps.
  longer = ul.UnrollConfig(truncation_length=6, min_horizon=7, max_horizon=7, stagger=False,
                           meta_loss="train")
  ps7 = ul.fresh_particle(LOPT, NOISY, longer, THETA, ul.key_data(jax.random.key(7)))
  last = _unroll_fn(NOISY, longer)(THETA, ps7)[0].params
  task = NOISY.task(ps.task_params)
  keys = jax.random.split(jax.random.fold_in(ul.wrap_key(ps.run_key), 0xFFFFFFFE), 3)
  norms = []
  for k in keys:
    k_batch, k_loss = jax.random.split(k)
    norms.append(float(task.normalizer(task.loss(last, k_loss,
                                                 task.sample_batch(k_batch, "train")))))
  assert len(set(norms)) == 3  # three different batches
  np.testing.assert_allclose(out_b.meta_loss, np.mean(norms), rtol=1e-4)
  assert abs(float(out_b.meta_loss) - float(out_a.meta_loss)) > 1e-3
  with pytest.raises(errors.FieldError, match="final_batches: must be an int >= 0"):
    ul.UnrollConfig(final_batches=-1)
  with pytest.raises(errors.FieldError, match="end_weight: weights the steps' losses"):
    ul.UnrollConfig(final_batches=2, end_weight=1.0)
