"""Loss weightings λ(σ), all expressed on the x0-space error ``‖D(x; σ) − x0‖²``.

Writing every weighting in one space is what makes them comparable across prediction targets:
a loss ``‖F − F_target‖²`` on a network output ``F`` with ``D = c_skip x + c_out F`` is the
x0-space loss with weight ``1/c_out²`` (Karras et al. 2022, arXiv 2206.00364, Eq. 8), so the
target only changes the weight that the output sees, ``λ(σ) c_out(σ)²``.

.. math::
  \\text{uniform: } 1, \\quad \\text{snr: } \\sigma^{-2}, \\quad
  \\text{min\\_snr: } \\min(\\sigma^{-2}, \\gamma), \\quad
  \\text{trunc\\_snr: } \\max(\\sigma^{-2}, 1), \\quad
  \\text{edm: } \\frac{\\sigma^2 + \\sigma_d^2}{(\\sigma \\sigma_d)^2}

* ``uniform``: plain x0 regression.
* ``snr``: the ε-prediction MSE of Ho et al. 2020 (arXiv 2006.11239, Eq. 14) seen in x0 space.
* ``min_snr``: Min-SNR-γ (Hang et al. 2023, arXiv 2303.09556, Eq. 12), γ = 5 by default.
* ``trunc_snr``: "truncated SNR" of Salimans & Ho 2022 (arXiv 2202.00512, Sec. 4).
* ``edm``: EDM's λ(σ) (Karras et al. 2022, Table 1), which makes the F-space loss unit-weighted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

WEIGHTINGS: tuple[str, ...] = ("uniform", "snr", "min_snr", "trunc_snr", "edm")

DEFAULT_MIN_SNR_GAMMA = 5.0


def weighting_index(name: str) -> int:
  """Position of weighting ``name`` in :data:`WEIGHTINGS`; ``ValueError`` if unknown."""
  if name not in WEIGHTINGS:
    raise ValueError(f"Unknown loss weighting {name!r}; known: {', '.join(WEIGHTINGS)}")
  return WEIGHTINGS.index(name)


def weight(weighting: jax.Array | int, sigma: jax.Array, sigma_data: float,
           gamma: float = DEFAULT_MIN_SNR_GAMMA) -> jax.Array:
  """The x0-space weight λ(σ) of weighting number ``weighting`` (may be traced).

  Args:
    weighting: index into :data:`WEIGHTINGS` (``lax.switch``).
    sigma: noise levels, any shape.
    sigma_data: the data's root-mean-square σ_d (used by ``edm``).
    gamma: the γ of Min-SNR-γ.

  Returns:
    λ(σ) with the shape of ``sigma``.
  """
  sigma = jnp.asarray(sigma, jnp.float32)
  snr = 1.0 / sigma**2
  branches = (
      lambda: jnp.ones_like(sigma),
      lambda: snr,
      lambda: jnp.minimum(snr, gamma),
      lambda: jnp.maximum(snr, 1.0),
      lambda: (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2,
  )
  return jax.lax.switch(weighting, branches)
