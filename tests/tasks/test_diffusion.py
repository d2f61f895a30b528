"""Tests of the diffusion task families: formulas, conversions, samplers, metrics, configs."""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks
from tasks import diffusion
from tasks.diffusion import data, metrics, sampling, schedules, targets, weighting

SD = 0.5


# ---------------------------------------------------------------------------------------------
# Config validation.


@pytest.mark.parametrize("kwargs, match", [
    ({"targets": ("eps", "score")}, "unknown names \\['score'\\]"),
    ({"schedules": ("cosine", "sqrt")}, "unknown names \\['sqrt'\\]"),
    ({"weightings": ("p2",)}, "unknown names \\['p2'\\]"),
    ({"datasets": ("mnist",)}, "unknown names \\['mnist'\\]"),
    ({"targets": ()}, "non-empty tuple"),
    ({"targets": "eps"}, "non-empty tuple"),
    ({"init_scale": (2.0, 1.0)}, "init_scale"),
    ({"batch_size": 0}, "batch_size"),
    ({"min_snr_gamma": 0.0}, "min_snr_gamma"),
    ({"scale": -1.0}, "scale"),
    ({"hidden": 0}, "hidden"),
])
def test_toy_family_rejects_bad_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    diffusion.Toy2DFamily(**kwargs)


def test_digits_family_rejects_bad_config():
  with pytest.raises(ValueError, match="denoiser"):
    diffusion.DigitsFamily(denoiser="unet")
  with pytest.raises(ValueError, match="unknown names"):
    diffusion.DigitsFamily(weightings=("edm", "nope"))


def test_task_params_by_name_and_unknown_names():
  family = diffusion.Toy2DFamily()
  tp = family.task_params(target="v", schedule="cosine", weighting="min_snr", dataset="rings",
                          init_scale=0.7)
  assert {k: int(v) for k, v in tp.items() if k != "init_scale"} == {
      "target": 2, "schedule": 1, "weighting": 2, "dataset": 4}
  for kwargs in ({"target": "score"}, {"schedule": "sqrt"}, {"weighting": "p2"},
                 {"dataset": "mnist"}):
    with pytest.raises(ValueError, match="Unknown"):
      family.task_params(**kwargs)


def test_restricted_family_samples_only_allowed_names():
  family = diffusion.Toy2DFamily(targets=("v", "edm"), schedules=("cosine",),
                                 weightings=("snr", "min_snr"), datasets=("two_moons",))
  tps = jax.jit(jax.vmap(family.sample))(jax.random.split(jax.random.key(0), 64))
  assert set(np.asarray(tps["target"]).tolist()) == {2, 3}
  assert set(np.asarray(tps["schedule"]).tolist()) == {1}
  assert set(np.asarray(tps["weighting"]).tolist()) == {1, 2}
  assert set(np.asarray(tps["dataset"]).tolist()) == {data.TOY_DATASETS.index("two_moons")}
  assert np.all((tps["init_scale"] >= 0.5) & (tps["init_scale"] <= 2.0))


def test_families_are_registered():
  """The registry's diffusion families are the default ones, under the names they carry."""
  for name, cls in (("diffusion_toy2d", diffusion.Toy2DFamily),
                    ("diffusion_digits", diffusion.DigitsFamily)):
    assert name in tasks.family_names()
    family = tasks.get(name)
    assert family == cls() and type(family) is cls and family.name == name
  assert tasks.get("diffusion_toy2d") != diffusion.Toy2DFamily(datasets=("two_moons",))


# ---------------------------------------------------------------------------------------------
# Weightings, schedules, targets: formulas against hand-computed values.


@jax.jit
def _all_weights(sigma):
  return jnp.stack([weighting.weight(i, sigma, SD, 5.0) for i in range(len(weighting.WEIGHTINGS))])


def test_weighting_formulas():
  sigma = jnp.array([0.1, 0.5, 2.0])
  w = dict(zip(weighting.WEIGHTINGS, np.asarray(_all_weights(sigma))))
  np.testing.assert_allclose(w["uniform"], [1.0, 1.0, 1.0])
  np.testing.assert_allclose(w["snr"], [100.0, 4.0, 0.25], rtol=1e-6)
  np.testing.assert_allclose(w["min_snr"], [5.0, 4.0, 0.25], rtol=1e-6)
  np.testing.assert_allclose(w["trunc_snr"], [100.0, 4.0, 1.0], rtol=1e-6)
  # EDM: (σ² + σ_d²)/(σ σ_d)² with σ_d = 0.5: (0.01 + 0.25)/0.0025, 0.5/0.0625, 4.25/1.
  np.testing.assert_allclose(w["edm"], [104.0, 8.0, 4.25], rtol=1e-6)


def test_unknown_names_in_lookups():
  for fn, name in ((weighting.weighting_index, "p2"), (targets.target_index, "score"),
                   (schedules.schedule_index, "sqrt")):
    with pytest.raises(ValueError, match="Unknown"):
      fn(name)


@jax.jit
def _schedule_table(u):
  return jnp.stack([schedules.sigma_from_uniform(i, u) for i in range(3)])


def test_schedule_quantiles():
  u = jnp.array([0.5, 0.25, 1e-9, 1 - 1e-9])
  linear, cosine, edm = np.asarray(_schedule_table(u))
  # Linear-β: σ(½)² = expm1(0.1/2 + 19.9/8).
  np.testing.assert_allclose(linear[0], math.sqrt(math.expm1(0.05 + 19.9 / 8)), rtol=1e-5)
  # Cosine: σ(t) = √(cos²φ(0)/cos²φ(t) − 1), φ(t) = (t + s)/(1 + s) π/2.
  phi = lambda t: (t + 0.008) / 1.008 * math.pi / 2
  np.testing.assert_allclose(cosine[1], math.sqrt((math.cos(phi(0)) / math.cos(phi(0.25)))**2 - 1),
                             rtol=1e-5)
  # EDM log-normal: the median is exp(P_mean); quantile ¼ is exp(P_mean + P_std Φ⁻¹(¼)).
  np.testing.assert_allclose(edm[0], math.exp(-1.2), rtol=1e-6)
  np.testing.assert_allclose(edm[1], math.exp(-1.2 - 1.2 * 0.6744897501960817), rtol=1e-5)
  # Extremes are clipped to [σ_min, σ_max].
  for row in (linear, cosine, edm):
    assert row[2] == pytest.approx(schedules.SIGMA_MIN) and row[3] == pytest.approx(80.0)


def test_stratified_sigma_has_one_sample_per_quantile_stratum():
  n = 16
  sigma = jax.jit(lambda k: schedules.sample_sigma(2, k, n))(jax.random.key(3))
  edges = np.asarray(_schedule_table(jnp.arange(n + 1) / n)[2])
  counts = np.histogram(np.asarray(sigma), bins=edges)[0]
  np.testing.assert_array_equal(counts, np.ones(n))


def test_vp_maps():
  sigma = jnp.array([0.01, 1.0, 30.0])
  alpha, s = schedules.vp_alpha(sigma), schedules.vp_scale(sigma)
  np.testing.assert_allclose(alpha**2 + s**2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(s / alpha, sigma, rtol=1e-6)
  np.testing.assert_allclose(schedules.snr(sigma), alpha**2 / s**2, rtol=1e-5)
  np.testing.assert_allclose(schedules.sigma_from_log_snr(-2 * jnp.log(sigma)), sigma, rtol=1e-6)


@jax.jit
def _oracle(x0, noise, sigma):
  """For every target: (F*, D(x0 + σ ε, F*)) with the oracle output F*."""
  x = x0 + sigma[:, None] * noise
  out = []
  for i in range(len(targets.TARGETS)):
    f = targets.regression_target(i, x0, noise, sigma, SD)
    out.append((f, targets.denoised(i, x, f, sigma, SD)))
  return out


def test_oracle_outputs_recover_x0_for_every_target():
  k1, k2 = jax.random.split(jax.random.key(0))
  sigma = jnp.array([0.002, 0.05, 0.5, 1.0, 7.0, 80.0])
  x0 = SD * jax.random.normal(k1, (6, 3))
  noise = jax.random.normal(k2, (6, 3))
  res = dict(zip(targets.TARGETS, _oracle(x0, noise, sigma)))
  for name, (_, d) in res.items():
    np.testing.assert_allclose(d, x0, atol=2e-5 * 80, rtol=1e-4, err_msg=name)
  s = sigma[:, None]
  alpha, vs = 1 / jnp.sqrt(1 + s**2), s / jnp.sqrt(1 + s**2)
  np.testing.assert_allclose(res["eps"][0], noise, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(res["x0"][0], x0, rtol=1e-6)
  np.testing.assert_allclose(res["v"][0], alpha * noise - vs * x0, rtol=1e-5, atol=1e-6)
  c_skip, c_out = SD**2 / (s**2 + SD**2), s * SD / jnp.sqrt(s**2 + SD**2)
  x = x0 + s * noise
  np.testing.assert_allclose(res["edm"][0], (x0 - c_skip * x) / c_out, rtol=1e-4, atol=1e-5)
  # The conversions used by samplers agree with the oracle targets.
  np.testing.assert_allclose(targets.eps_from_denoised(x, x0, sigma), noise, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(targets.v_from_denoised(x, x0, sigma), res["v"][0], rtol=1e-4,
                             atol=1e-4)


def test_edm_preconditioning_values():
  pc = jax.jit(lambda s: targets.preconditioning(3, s, SD))(jnp.array([SD]))
  np.testing.assert_allclose(pc.c_skip, [0.5], rtol=1e-6)
  np.testing.assert_allclose(pc.one_minus_c_skip, [0.5], rtol=1e-6)
  np.testing.assert_allclose(pc.c_out, [SD / math.sqrt(2)], rtol=1e-6)
  np.testing.assert_allclose(pc.c_in, [1 / (SD * math.sqrt(2))], rtol=1e-6)
  np.testing.assert_allclose(pc.c_noise, [0.25 * math.log(SD)], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Every (target, schedule, weighting) combination, vmapped: finite loss, gradient, normaliser.

_COMBOS = list(itertools.product(range(len(targets.TARGETS)), range(len(schedules.SCHEDULES)),
                                 range(len(weighting.WEIGHTINGS))))


@pytest.fixture(scope="module")
def combo_results():
  family = diffusion.Toy2DFamily(batch_size=32, hidden=16, depth=2)
  n = len(_COMBOS)
  t, s, w = (jnp.asarray(c, jnp.int32) for c in zip(*_COMBOS))
  tps = {"target": t, "schedule": s, "weighting": w,
         "dataset": jnp.arange(n, dtype=jnp.int32) % len(data.TOY_DATASETS),
         "init_scale": jnp.linspace(0.5, 2.0, n)}

  def one(tp, key):
    task = family.task(tp)
    params = task.init(key)
    batch = task.sample_batch(key, "train")
    loss, grad = jax.value_and_grad(task.loss)(params, key, batch)
    zero = jax.tree.map(jnp.zeros_like, params)
    return {"loss": loss, "grad": grad, "norm": task.normalizer(loss),
            "ref": task.reference_loss(), "zero_loss": task.loss(zero, key, batch),
            "nan_norm": task.normalizer(jnp.nan), "x0": batch["x0"]}

  keys = jax.random.split(jax.random.key(0), n)
  return family, tps, keys, jax.jit(jax.vmap(one))(tps, keys)


def test_every_combination_has_finite_loss_and_gradient(combo_results):
  _, _, _, out = combo_results
  assert out["loss"].shape == (len(_COMBOS),)
  assert np.isfinite(out["loss"]).all() and (out["loss"] > 0).all()
  for g in jax.tree.leaves(out["grad"]):
    assert np.isfinite(g).all()
  gnorm = sum(np.square(g.reshape(len(_COMBOS), -1)).sum(1) for g in jax.tree.leaves(out["grad"]))
  assert (gnorm > 0).all()
  assert ((out["norm"] >= 0) & (out["norm"] <= 10)).all()
  np.testing.assert_array_equal(out["nan_norm"], 10.0)


def test_vmapped_tasks_match_unbatched(combo_results):
  family, tps, keys, out = combo_results

  @jax.jit
  def single(tp, key):
    task = family.task(tp)
    return task.loss(task.init(key), key, task.sample_batch(key, "train"))

  for i in (0, 17, 33, 59):
    tp = jax.tree.map(lambda x: x[i], tps)
    np.testing.assert_allclose(single(tp, keys[i]), out["loss"][i], rtol=2e-5, err_msg=str(i))


def test_reference_loss_closed_forms(combo_results):
  _, _, _, out = combo_results
  ref = {c: float(r) for c, r in zip(_COMBOS, out["ref"])}
  ti, si, wi = targets.target_index, schedules.schedule_index, weighting.weighting_index
  for s in range(3):
    # EDM target + EDM λ: the zero-output target has unit variance at every σ.
    assert ref[(ti("edm"), s, wi("edm"))] == pytest.approx(1.0, rel=1e-5)
    # ε target + SNR weighting: λ(σ)·σ² = 1.
    assert ref[(ti("eps"), s, wi("snr"))] == pytest.approx(1.0, rel=1e-5)
    # x0 target + uniform weighting: predicting 0 costs E[x0²] = σ_d².
    assert ref[(ti("x0"), s, wi("uniform"))] == pytest.approx(SD**2, rel=1e-5)


def test_zero_output_loss_matches_reference_on_average():
  family = diffusion.Toy2DFamily(datasets=("checkerboard",), batch_size=256)
  task = family.task(family.task_params(target="v", schedule="cosine", weighting="min_snr",
                                        dataset="checkerboard"))
  params = jax.tree.map(jnp.zeros_like, task.init(jax.random.key(0)))

  @jax.jit
  def mean_loss(params, keys):  # params as an argument, not a baked-in constant (see report)
    return jnp.mean(jax.vmap(lambda k: task.loss(params, k, task.sample_batch(k)))(keys))

  mc = mean_loss(params, jax.random.split(jax.random.key(1), 64))
  np.testing.assert_allclose(mc, task.reference_loss(), rtol=0.03)


def test_toy_data_are_standardised(combo_results):
  for name in data.TOY_DATASETS:
    x = np.asarray(jax.jit(data.toy_sampler(name), static_argnums=1)(jax.random.key(0), 20000))
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.05, err_msg=name)
    np.testing.assert_allclose(x.std(0), 1.0, atol=0.05, err_msg=name)
  with pytest.raises(ValueError, match="Unknown toy dataset"):
    data.toy_sampler("mnist")


# ---------------------------------------------------------------------------------------------
# Samplers.


def _gaussian_denoiser(x, sigma):
  """The exact denoiser of N(0, σ_d² I) data: E[x0 | x] = σ_d²/(σ² + σ_d²) x."""
  return SD**2 / (sigma**2 + SD**2) * x


def test_sigma_grids():
  g = np.asarray(sampling.karras_sigmas(18))
  assert g.shape == (19,) and g[-1] == 0.0
  np.testing.assert_allclose([g[0], g[-2]], [80.0, 0.002], rtol=1e-5)
  assert (np.diff(g) < 0).all()
  for name in ("linear", "cosine"):
    g = np.asarray(sampling.schedule_sigmas(name, 10))
    assert g.shape == (11,) and g[-1] == 0.0 and (np.diff(g) <= 0).all()
  with pytest.raises(ValueError):
    sampling.schedule_sigmas("edm", 10)


def test_ddim_with_eta_zero_is_the_euler_step():
  sigmas = sampling.karras_sigmas(12)
  key = jax.random.key(4)
  ddim = sampling.ddim_sample(_gaussian_denoiser, key, (64, 2), sigmas, eta=0.0, sigma_data=SD)
  # ddim draws its initial noise from the first half of its key: give Euler the same start.
  k_init, _ = jax.random.split(key)
  euler = sampling.edm_sample(_gaussian_denoiser, k_init, (64, 2), sigmas, heun=False,
                              sigma_data=SD)
  np.testing.assert_allclose(ddim, euler, rtol=1e-4, atol=1e-5)
  heun = sampling.edm_sample(_gaussian_denoiser, k_init, (64, 2), sigmas, sigma_data=SD)
  assert not np.allclose(heun, euler, rtol=1e-4, atol=1e-5)


def test_samplers_reproduce_gaussian_data_with_exact_denoiser():
  key, shape = jax.random.key(0), (4000, 2)
  heun = sampling.edm_sample(_gaussian_denoiser, key, shape, sampling.karras_sigmas(32),
                             sigma_data=SD)
  np.testing.assert_allclose(np.std(heun, 0), SD, rtol=0.05)
  np.testing.assert_allclose(np.mean(heun, 0), 0.0, atol=0.05)
  # Ancestral DDIM (η = 1) with the posterior mean plugged in loses variance on coarse grids;
  # the error shrinks as the grid is refined.
  err = [np.abs(np.std(sampling.ddim_sample(_gaussian_denoiser, key, shape,
                                            sampling.karras_sigmas(n), eta=1.0, sigma_data=SD),
                       0) - SD).max() for n in (32, 128)]
  assert err[1] < err[0] and err[1] < 0.06 * SD


# ---------------------------------------------------------------------------------------------
# Metrics.


def test_energy_distance_hand_computed_and_properties():
  x, y = jnp.array([[0.0], [1.0]]), jnp.array([[0.0], [3.0]])
  # 2·mean|x−y| − mean|x−x'| − mean|y−y'| = 2·1.5 − 0.5 − 1.5.
  assert float(metrics.energy_distance(x, y)) == pytest.approx(1.0, rel=1e-6)
  k1, k2 = jax.random.split(jax.random.key(0))
  a, b = jax.random.normal(k1, (300, 2)), jax.random.normal(k2, (300, 2))
  assert float(metrics.energy_distance(a, a)) == 0.0
  near = float(metrics.energy_distance(a, b))
  far = float(metrics.energy_distance(a, b + jnp.array([1.0, 0.0])))
  assert 0 <= near < 0.05 < far
  assert float(metrics.mmd_rbf(a, a)) == pytest.approx(0.0, abs=1e-6)
  assert float(metrics.mmd_rbf(a, b)) < float(metrics.mmd_rbf(a, b + 1.0))


def test_denoising_error_of_the_wiener_filter_is_one():
  family = diffusion.Toy2DFamily(datasets=("eight_gaussians",))
  task = family.task(family.task_params(target="edm", dataset="eight_gaussians"))
  zero = jax.tree.map(jnp.zeros_like, task.init(jax.random.key(0)))  # D = c_skip x: Wiener
  x0 = SD * jax.random.normal(jax.random.key(1), (4096, 2))  # Gaussian data: Wiener is optimal

  @jax.jit
  def evaluate(params, x0):
    key = jax.random.key(2)
    return (metrics.denoising_error_curve(task, params, key, x0=x0),
            metrics.denoising_error(task, params, key, x0=x0),
            metrics.denoising_error(task, params, key, x0=x0, relative=False))

  curve, rel, raw = evaluate(zero, x0)
  np.testing.assert_allclose(curve, metrics.wiener_error(metrics.DEFAULT_SIGMAS, SD), rtol=0.06)
  assert float(rel) == pytest.approx(1.0, abs=0.03)
  np.testing.assert_allclose(raw, np.mean(curve), rtol=1e-6)
  # Same key -> the same number (fixed data and noise).
  assert float(evaluate(zero, x0)[1]) == float(rel)


# ---------------------------------------------------------------------------------------------
# Digits.


def test_digits_data_and_family():
  train, valid, test = data.digits()
  assert train.shape == (1500, 64) and valid.shape == (148, 64) and test.shape == (149, 64)
  assert train.min() == -1.0 and train.max() == 1.0
  assert not (train[:, None, :] == valid[None, :5, :]).all(-1).any()  # split is disjoint
  for denoiser in ("conv", "mlp"):
    family = diffusion.DigitsFamily(denoiser=denoiser, batch_size=8)

    def one(key, family=family):
      task = family.task(family.sample(key))
      params = task.init(key)
      loss = task.loss(params, key, task.sample_batch(key, "train"))
      den = task.denoise(params, task.sample_batch(key, "valid")["x0"], 0.5)
      return loss, task.normalizer(loss), den

    loss, norm, den = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), 4))
    assert np.isfinite(loss).all() and ((norm > 0) & (norm < 10)).all(), (denoiser, norm)
    assert den.shape == (4, 8, 64)


def test_im2col_conv_matches_lax_conv():
  from tasks.diffusion import denoisers
  p = {"w": jax.random.normal(jax.random.key(0), (3, 3, 4, 5)), "b": jnp.arange(5.0)}
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
  ref = jax.lax.conv_general_dilated(x, p["w"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["b"]
  np.testing.assert_allclose(denoisers._conv(p, x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("denoiser", ["conv", "mlp"])
def test_chunked_denoiser_equals_one_call(denoiser):
  """Batches larger than ``batch_size`` run in chunks (the last padded): the same outputs, and
  the same evaluation loss, as one call over the whole batch."""
  family = diffusion.DigitsFamily(denoiser=denoiser, batch_size=16)
  task = family.task(family.sample(jax.random.key(0)))
  params = task.init(jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (37, 64))  # 16 + 16 + 5
  c_noise = jnp.linspace(-1.0, 1.0, 37)
  whole = task.denoiser.apply(params, x, c_noise)
  np.testing.assert_allclose(task.apply_denoiser(params, x, c_noise), whole, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(task.apply_denoiser(params, x[:16], c_noise[:16]), whole[:16])
  # The loss on the test split's evaluation set (4 x 149 examples, not a multiple of 16).
  batch = task.eval_batch("test")
  assert batch["x0"].shape[0] % 16
  unchunked = dataclasses.replace(task, batch_size=batch["x0"].shape[0])
  key = jax.random.key(3)
  np.testing.assert_allclose(task.loss(params, key, batch), unchunked.loss(params, key, batch),
                             rtol=1e-5)
