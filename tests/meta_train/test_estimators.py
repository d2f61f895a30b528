"""Estimator correctness against the exact meta-gradient of a quadratic's full-horizon loss.

The learned optimizer is SGD with a learnable log learning rate; the task is one fixed,
noise-free quadratic with a fixed initial point, so the full-horizon meta-loss
``(1/T) Σ_t n(f(x_t))`` is a deterministic function of ``log_lr`` whose exact gradient
``jax.grad`` computes from an independent reference loop. Each of ``N`` independent samples runs
one inner training of ``T = M K`` steps as ``M`` truncations (or one full-horizon estimate) and
averages its estimates; the bias is judged in units of the measured standard error.
Run with ``pytest -s`` to see the printed bias and variance.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from meta_train.estimators import registry
from tasks.quadratic import QuadraticFamily, QuadraticTask

T, K = 24, 4
M = T // K
N = 256
SIGMA = 0.01


@dataclasses.dataclass(frozen=True)
class _FixedInitTask(QuadraticTask):
  x0: jax.Array = None

  def init(self, key):
    del key
    return {"x": self.x0}


@dataclasses.dataclass(frozen=True)
class _FixedFamily(QuadraticFamily):
  """Always the same quadratic and initial point (whatever the key)."""

  def sample(self, key):
    del key
    tp = QuadraticFamily.sample(self, jax.random.key(42))
    tp["x0"] = tp["optimum"] + tp["init_scale"] * jax.random.normal(jax.random.key(7),
                                                                    (self.dim,))
    return tp

  def task(self, task_params):
    t = QuadraticFamily.task(self, task_params)
    return _FixedInitTask(hessian=t.hessian, optimum=t.optimum, init_scale=t.init_scale,
                          noise_scale=t.noise_scale, x0=task_params["x0"])


FAMILY = _FixedFamily(dim=4, min_eig=0.1, max_eig=4.0, noise_scale=(0.0, 0.0))
LOPT = learned_opt.SGDMomentum(initial_learning_rate=0.1, initial_momentum=0.0)
THETA = LOPT.init(jax.random.key(0))


def _reference_objective(log_lr, steps=T):
  """Mean normalised loss over ``steps`` gradient-descent steps, written out independently."""
  tp = FAMILY.sample(None)
  q, lam = tp["rotation"], tp["eigenvalues"]
  a = (q * lam) @ q.T
  ref = 0.5 * tp["init_scale"]**2 * jnp.sum(lam)
  x, total = tp["x0"], 0.0
  for _ in range(steps):
    r = x - tp["optimum"]
    total = total + 0.5 * r @ a @ r / ref
    x = x - jnp.exp(log_lr) * (a @ r)
  return total / steps


@pytest.fixture(scope="module")
def exact():
  return float(jax.grad(_reference_objective)(THETA["log_lr"]))


def _samples(name, horizon=T, **kwargs):
  """N independent estimates of d(meta-loss)/d(log_lr), each averaged over M truncations."""
  truncation = {} if name == "full_es" else {"truncation_length": K, "stagger": False}
  est = registry.make_estimator(name, LOPT, FAMILY, min_horizon=horizon, max_horizon=horizon,
                                **truncation, **kwargs)
  num_estimates = 1 if name == "full_es" else M

  def one(key):
    k_init, k_est = jax.random.split(key)
    state = est.init(k_init, THETA)

    def body(state, k):
      g, state, metrics = est.estimate(THETA, state, k)
      return state, (g["log_lr"], metrics["nonfinite"])

    _, (g, nonfinite) = jax.lax.scan(body, state, jax.random.split(k_est, num_estimates))
    return jnp.mean(g), jnp.sum(nonfinite)

  g, nonfinite = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(1), N))
  assert int(jnp.sum(nonfinite)) == 0
  return np.asarray(g, np.float64)


def _report(name, g, exact):
  mean, std = g.mean(), g.std(ddof=1)
  se = std / np.sqrt(len(g))
  z = (mean - exact) / se if se > 0 else float("inf")
  print(f"\n{name:8s} exact {exact:+.5f}  mean {mean:+.5f}  bias {mean - exact:+.5f}  "
        f"std {std:.5f}  se {se:.5f}  bias/se {z:+.1f}")
  return mean, se


def test_reference_matches_unrolled_tbptt_over_full_horizon(exact):
  # TBPTT with a single truncation covering the whole horizon is the exact gradient.
  est = registry.make_estimator("tbptt", LOPT, FAMILY, truncation_length=T, min_horizon=T,
                                max_horizon=T, stagger=False, num_particles=1)
  state = est.init(jax.random.key(0), THETA)
  g, _, metrics = jax.jit(est.estimate)(THETA, state, jax.random.key(1))
  np.testing.assert_allclose(float(g["log_lr"]), exact, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["meta_loss"]),
                             float(_reference_objective(THETA["log_lr"])), rtol=1e-5)
  assert float(g["logit_momentum"]) == 0.0  # momentum is not learned


@pytest.mark.parametrize("name", ["pes", "full_es"])
def test_unbiased_estimators(name, exact):
  g = _samples(name, num_pairs=1, sigma=SIGMA)
  mean, se = _report(name, g, exact)
  assert se > 0
  assert abs(mean - exact) < 4 * se
  assert se < 0.15 * abs(exact)  # the test has the power to see a 60% bias


@pytest.mark.parametrize("name", ["tbptt", "es"])
def test_truncation_bias(name, exact):
  kwargs = {"num_particles": 1} if name == "tbptt" else {"num_pairs": 1, "sigma": SIGMA}
  g = _samples(name, **kwargs)
  mean, se = _report(name, g, exact)
  # Short truncations ignore how log_lr shaped the state: they see well under the true gradient.
  assert abs(mean - exact) > 8 * se
  assert abs(mean - exact) > 0.3 * abs(exact)
  assert np.sign(mean) == np.sign(exact)


def test_pes_unbiased_across_a_reset_inside_a_truncation():
  # Horizon 22 with K = 4: the 6th truncation runs steps 20, 21 of the first run and steps
  # 0, 1 of the next (same fixed task), so the target is the mean loss of those 24 steps.
  h = T - 2
  target = lambda lr: (h * _reference_objective(lr, h) + 2 * _reference_objective(lr, 2)) / T
  exact = float(jax.grad(target)(THETA["log_lr"]))
  g = _samples("pes", horizon=h, num_pairs=1, sigma=SIGMA)
  mean, se = _report("pes/reset", g, exact)
  assert abs(mean - exact) < 4 * se
  assert se < 0.15 * abs(exact)
