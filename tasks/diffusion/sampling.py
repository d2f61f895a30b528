"""Samplers for trained denoisers: EDM's Euler/Heun ODE solvers and DDIM, all in σ-space.

A sampler only needs the x0 estimate ``D(x; σ)``, which every prediction target provides
(:meth:`~tasks.diffusion.family.DiffusionTask.denoise`), so one sampler serves all targets.

* :func:`edm_sample` integrates the probability-flow ODE ``dx/dσ = (x − D(x; σ))/σ`` with Euler
  or Heun's 2nd-order method (Karras et al. 2022, arXiv 2206.00364, Algorithm 1), on the grid
  :func:`karras_sigmas` (Eq. 5).
* :func:`ddim_sample` is DDIM (Song et al. 2021, arXiv 2010.02502, Eq. 12) in VP variables
  ``z = α x``: ``z' = α' x̂0 + √(s'² − c²) ε̂ + c ξ`` with
  ``c = η (s'/s) √(1 − α²/α'²)`` (Eq. 16). With ``η = 0`` it is exactly the Euler step in σ
  (Karras et al. 2022, Sec. 3), which the tests check.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from tasks.diffusion import schedules

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x (B, d), σ scalar) -> x0 estimate


def karras_sigmas(num_steps: int, sigma_min: float = schedules.SIGMA_MIN,
                  sigma_max: float = schedules.SIGMA_MAX, rho: float = 7.0) -> jax.Array:
  """EDM's time steps ``σ_i = (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ``, then 0.

  Returns:
    Shape ``(num_steps + 1,)``, decreasing, last entry 0 (Karras et al. 2022, Eq. 5).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  i = jnp.arange(num_steps) / max(num_steps - 1, 1)
  lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
  return jnp.append((hi + i * (lo - hi)) ** rho, 0.0)


def schedule_sigmas(schedule: str, num_steps: int, t_min: float = 1e-3) -> jax.Array:
  """σ at ``num_steps`` uniform times ``t`` from 1 down to ``t_min`` of a VP schedule, then 0.

  Args:
    schedule: ``"linear"`` or ``"cosine"`` (DDPM/DDIM-style uniform time grid).
    num_steps: number of denoising steps.
    t_min: smallest time.

  Returns:
    Shape ``(num_steps + 1,)``, decreasing, clipped to ``[SIGMA_MIN, SIGMA_MAX]``, last entry 0.
  """
  fns = {"linear": schedules.linear_sigma, "cosine": schedules.cosine_sigma}
  if schedule not in fns:
    raise ValueError(f"schedule_sigmas needs 'linear' or 'cosine', got {schedule!r}")
  t = jnp.linspace(1.0, t_min, num_steps)
  return jnp.append(schedules.clip_sigma(fns[schedule](t)), 0.0)


def _initial(key, shape, sigma0, sigma_data):
  return jnp.sqrt(sigma0**2 + sigma_data**2) * jax.random.normal(key, shape)


def edm_sample(denoise_fn: DenoiseFn, key: jax.Array, shape: tuple[int, ...], sigmas: jax.Array,
               *, heun: bool = True, sigma_data: float = 0.0) -> jax.Array:
  """Deterministic EDM sampler (Karras et al. 2022, Algorithm 1).

  Args:
    denoise_fn: ``(x, σ) -> D(x; σ)``.
    key: draws ``x_0 ~ N(0, (σ_0² + σ_d²) I)``.
    shape: ``(num_samples, d)``.
    sigmas: decreasing grid ending in 0 (e.g. :func:`karras_sigmas`).
    heun: Heun's 2nd-order correction on every step but the last (else Euler).
    sigma_data: σ_d, added to the initial variance.

  Returns:
    Samples of shape ``shape``.
  """
  x = _initial(key, shape, sigmas[0], sigma_data)

  def step(x, s):
    sigma, sigma_next = s
    d = (x - denoise_fn(x, sigma)) / sigma
    x_euler = x + (sigma_next - sigma) * d
    if not heun:
      return x_euler, None
    safe_next = jnp.maximum(sigma_next, schedules.SIGMA_MIN)
    d_next = (x_euler - denoise_fn(x_euler, safe_next)) / safe_next
    x_heun = x + (sigma_next - sigma) * 0.5 * (d + d_next)
    return jnp.where(sigma_next > 0, x_heun, x_euler), None

  x, _ = jax.lax.scan(step, x, (sigmas[:-1], sigmas[1:]))
  return x


def ddim_sample(denoise_fn: DenoiseFn, key: jax.Array, shape: tuple[int, ...], sigmas: jax.Array,
                *, eta: float = 0.0, sigma_data: float = 0.0) -> jax.Array:
  """DDIM (Song et al. 2021, arXiv 2010.02502, Eq. 12 and 16) on a σ grid ending in 0.

  Args:
    denoise_fn: ``(x, σ) -> D(x; σ)``.
    key: initial noise and, for ``eta > 0``, the fresh noise of each step.
    shape: ``(num_samples, d)``.
    sigmas: decreasing grid ending in 0 (e.g. :func:`schedule_sigmas`).
    eta: 0 for deterministic DDIM, 1 for DDPM-like ancestral steps.
    sigma_data: σ_d, added to the initial variance.

  Returns:
    Samples of shape ``shape`` (in x = z/α space, i.e. data scale).
  """
  k_init, k_steps = jax.random.split(key)
  x = _initial(k_init, shape, sigmas[0], sigma_data)
  keys = jax.random.split(k_steps, sigmas.shape[0] - 1)

  def step(x, s):
    sigma, sigma_next, k = s
    x0_hat = denoise_fn(x, sigma)
    eps_hat = (x - x0_hat) / sigma
    alpha, scale = schedules.vp_alpha(sigma), schedules.vp_scale(sigma)
    alpha_n, scale_n = schedules.vp_alpha(sigma_next), schedules.vp_scale(sigma_next)
    c = eta * (scale_n / scale) * jnp.sqrt(jnp.maximum(1.0 - (alpha / alpha_n) ** 2, 0.0))
    z_next = (alpha_n * x0_hat + jnp.sqrt(jnp.maximum(scale_n**2 - c**2, 0.0)) * eps_hat
              + c * jax.random.normal(k, x.shape))
    return z_next / alpha_n, None

  x, _ = jax.lax.scan(step, x, (sigmas[:-1], sigmas[1:], keys))
  return x


def sample(task, params, key: jax.Array, num_samples: int, *, num_steps: int = 18,
           method: str = "heun", sigmas: jax.Array | None = None, eta: float = 0.0) -> jax.Array:
  """Draws ``num_samples`` samples from a :class:`~tasks.diffusion.family.DiffusionTask` model.

  Args:
    task: the task (any target: the sampler uses its x0 estimate).
    params: trained denoiser parameters.
    key: PRNG key.
    num_samples: number of samples.
    num_steps: steps of the default grid (:func:`karras_sigmas`).
    method: ``"heun"``, ``"euler"`` or ``"ddim"``.
    sigmas: an explicit decreasing σ grid ending in 0 (overrides ``num_steps``).
    eta: DDIM stochasticity.

  Returns:
    Samples, shape ``(num_samples, d)``.
  """
  if method not in ("heun", "euler", "ddim"):
    raise ValueError(f"method must be 'heun', 'euler' or 'ddim', got {method!r}")
  if sigmas is None:
    sigmas = karras_sigmas(num_steps)
  denoise_fn = lambda x, s: task.denoise(params, x, s)
  shape = (num_samples, task.denoiser.dim)
  if method == "ddim":
    return ddim_sample(denoise_fn, key, shape, sigmas, eta=eta, sigma_data=task.sigma_data)
  return edm_sample(denoise_fn, key, shape, sigmas, heun=method == "heun",
                    sigma_data=task.sigma_data)
