"""Metrics that compare diffusion models across targets, schedules and weightings.

Raw losses of different targets or weightings are not comparable; these are:

* :func:`denoising_error`: x0-space MSE ``E‖D(x0 + σε; σ) − x0‖²/d`` on held-out data at a fixed
  σ grid with fixed noise (the same key gives the same x0, ε and σ for every model).
* :func:`energy_distance` (Székely & Rizzo 2013, doi:10.1016/j.jspi.2013.03.018, Eq. 2) and
  :func:`mmd_rbf` (Gretton et al. 2012, JMLR 13, Eq. 3) between generated and held-out samples.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

DEFAULT_SIGMAS: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def _pairwise_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  diff = x[:, None, :] - y[None, :, :]
  return jnp.sqrt(jnp.sum(diff**2, -1))


def energy_distance(samples: jax.Array, reference: jax.Array) -> jax.Array:
  """Energy distance ``2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖`` (V-statistic).

  It is ≥ 0, exactly 0 for identical sample sets, and 0 in the limit iff the distributions
  are equal.

  Args:
    samples: shape ``(n, d)``.
    reference: shape ``(m, d)``.

  Returns:
    A scalar.
  """
  xy = jnp.mean(_pairwise_distances(samples, reference))
  xx = jnp.mean(_pairwise_distances(samples, samples))
  yy = jnp.mean(_pairwise_distances(reference, reference))
  return 2 * xy - xx - yy


def mmd_rbf(samples: jax.Array, reference: jax.Array,
            bandwidths: Sequence[float] = (0.1, 0.3, 1.0)) -> jax.Array:
  """Squared MMD (V-statistic) with a sum of RBF kernels ``exp(−‖a − b‖²/(2h²))``.

  Args:
    samples: shape ``(n, d)``.
    reference: shape ``(m, d)``.
    bandwidths: kernel bandwidths h.

  Returns:
    A scalar ≥ 0 (exactly 0 for identical sample sets).
  """
  def k(a, b):
    d2 = jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, -1)
    return sum(jnp.exp(-d2 / (2 * h**2)) for h in bandwidths)

  return (jnp.mean(k(samples, samples)) + jnp.mean(k(reference, reference))
          - 2 * jnp.mean(k(samples, reference)))


def denoising_error_curve(task, params, key: jax.Array,
                          sigmas: Sequence[float] = DEFAULT_SIGMAS,
                          x0: jax.Array | None = None) -> jax.Array:
  """Per-σ x0-space MSE of ``task.denoise`` on held-out data with fixed noise.

  Args:
    task: a :class:`~tasks.diffusion.family.DiffusionTask`.
    params: denoiser parameters.
    key: fixes the held-out batch and the noise (reuse it to compare models).
    sigmas: the σ grid.
    x0: optional clean data ``(B, d)`` (default: ``task.sample_batch(key, "valid")``).

  Returns:
    Shape ``(len(sigmas),)``: ``mean((D(x0 + σ ε; σ) − x0)²)`` at each σ.
  """
  k_data, k_noise = jax.random.split(key)
  if x0 is None:
    x0 = task.sample_batch(k_data, "valid")["x0"]
  sigmas = jnp.asarray(sigmas, jnp.float32)
  noise = jax.random.normal(k_noise, (sigmas.shape[0],) + x0.shape)

  def at(sigma, eps):
    return jnp.mean((task.denoise(params, x0 + sigma * eps, sigma) - x0) ** 2)

  return jax.vmap(at)(sigmas, noise)


def wiener_error(sigmas: Sequence[float], sigma_data: float) -> jax.Array:
  """Per-dimension MSE ``σ² σ_d²/(σ² + σ_d²)`` of the best linear denoiser.

  The denoiser is ``D = x σ_d²/(σ² + σ_d²)``.

  Exact for data with per-coordinate second moment σ_d² (Karras et al. 2022, arXiv 2206.00364,
  App. B.6: it is EDM's ``c_skip x``, the denoiser of a zero-output network).
  """
  s2 = jnp.asarray(sigmas, jnp.float32) ** 2
  return s2 * sigma_data**2 / (s2 + sigma_data**2)


def denoising_error(task, params, key: jax.Array, sigmas: Sequence[float] = DEFAULT_SIGMAS,
                    x0: jax.Array | None = None, *, relative: bool = True) -> jax.Array:
  r"""The held-out x0-space denoising error, averaged over a fixed σ grid (lower is better).

  .. math::
    \frac{1}{K}\sum_{k=1}^{K} \frac{\mathrm{MSE}(\sigma_k)}{e(\sigma_k)}, \qquad
    e(\sigma) = \frac{\sigma^2 \sigma_d^2}{\sigma^2 + \sigma_d^2}\ \text{(relative)}
    \ \text{or}\ 1

  The raw MSE at large σ is close to σ_d² for every model and would swamp the grid's mean, so
  by default each σ's MSE is divided by the best linear denoiser's (:func:`wiener_error`): 1 is
  the Wiener filter, below 1 the model has learned the data's structure. The divisor is fixed
  per σ, so models, targets and weightings compare on the same scale.

  Args:
    task, params, key, sigmas, x0: as in :func:`denoising_error_curve`.
    relative: divide by :func:`wiener_error` (default) or average the raw MSE.

  Returns:
    A scalar.
  """
  curve = denoising_error_curve(task, params, key, sigmas, x0)
  if relative:
    curve = curve / wiener_error(sigmas, task.sigma_data)
  return jnp.mean(curve)
