"""Denoising-diffusion task families, their samplers and sample-quality metrics.

Families (registered on import): ``"diffusion_toy2d"`` (:class:`Toy2DFamily`) and
``"diffusion_digits"`` (:class:`DigitsFamily`). A task is (p(σ), λ(σ), prediction target, init
scale), see :mod:`tasks.diffusion.family`.

Example::

  from tasks import diffusion
  family = diffusion.Toy2DFamily(datasets=("two_moons",))
  task = family.task(family.task_params(target="v", schedule="cosine", weighting="min_snr",
                                        dataset="two_moons"))
  params = task.init(key)            # ... train on task.loss ...
  x = diffusion.sample(task, params, key, 512)
  print(diffusion.energy_distance(x, task.heldout(key, 512)),
        diffusion.denoising_error(task, params, key))
"""

from tasks.diffusion.data import TOY_DATASETS, sample_toy, toy_sampler
from tasks.diffusion.denoisers import ConvDenoiser, MLPDenoiser, sinusoidal_embedding
from tasks.diffusion.family import DiffusionTask, DigitsFamily, Toy2DFamily
from tasks.diffusion.metrics import (denoising_error, denoising_error_curve, energy_distance,
                                     mmd_rbf, wiener_error)
from tasks.diffusion.sampling import (ddim_sample, edm_sample, karras_sigmas, sample,
                                      schedule_sigmas)
from tasks.diffusion.schedules import SCHEDULES, sample_sigma, sigma_from_uniform
from tasks.diffusion.targets import (TARGETS, Preconditioning, denoised, preconditioning,
                                     regression_target)
from tasks.diffusion.weighting import WEIGHTINGS, weight

__all__ = [
    "SCHEDULES",
    "TARGETS",
    "TOY_DATASETS",
    "WEIGHTINGS",
    "ConvDenoiser",
    "DiffusionTask",
    "DigitsFamily",
    "MLPDenoiser",
    "Preconditioning",
    "Toy2DFamily",
    "ddim_sample",
    "denoised",
    "denoising_error",
    "denoising_error_curve",
    "edm_sample",
    "energy_distance",
    "karras_sigmas",
    "mmd_rbf",
    "preconditioning",
    "regression_target",
    "sample",
    "sample_sigma",
    "sample_toy",
    "schedule_sigmas",
    "sigma_from_uniform",
    "sinusoidal_embedding",
    "toy_sampler",
    "weight",
    "wiener_error",
]
