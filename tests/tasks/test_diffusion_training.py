"""A diffusion model trained longer denoises better and samples closer to the data."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tasks import diffusion

STEPS = (0, 20, 1000)  # 300 steps is too few for a clear gain on the EDM task


@pytest.fixture(scope="module")
def trained_metrics(train_loop):
  family = diffusion.Toy2DFamily(datasets=("eight_gaussians", "two_moons"))
  configs = [dict(target="edm", schedule="edm", weighting="edm", dataset="eight_gaussians"),
             dict(target="eps", schedule="linear", weighting="snr", dataset="two_moons")]
  tps = jax.tree.map(lambda *x: jnp.stack(x), *[family.task_params(**c) for c in configs])
  opt = optax.adam(3e-3)

  def train(tp, num_steps):
    task = family.task(tp)
    return train_loop(task, task.init(jax.random.key(0)), opt, jax.random.key(1), num_steps)[0]

  def evaluate(tp, params):
    task = family.task(tp)
    samples = diffusion.sample(task, params, jax.random.key(2), 512, num_steps=18)
    return (diffusion.denoising_error(task, params, jax.random.key(3)),
            diffusion.energy_distance(samples, task.heldout(jax.random.key(4), 512)))

  train = jax.jit(jax.vmap(train, in_axes=(0, None)), static_argnums=1)
  evaluate = jax.jit(jax.vmap(evaluate))
  rows = [evaluate(tps, train(tps, n)) for n in STEPS]
  return {name: np.stack([np.asarray(r[i]) for r in rows]) for i, name in
          enumerate(("denoising_error", "energy_distance"))}


@pytest.mark.parametrize("metric", ["denoising_error", "energy_distance"])
def test_longer_training_gives_better_metric(trained_metrics, metric):
  values = trained_metrics[metric]  # (len(STEPS), 2 tasks)
  assert np.isfinite(values).all()
  untrained, short, long = values
  assert (long < short).all() and (long < untrained).all(), (metric, values)


def test_trained_edm_model_beats_the_wiener_filter(trained_metrics):
  # Relative denoising error 1 is the best linear denoiser; a trained model learns structure.
  assert trained_metrics["denoising_error"][-1, 0] < 0.97
