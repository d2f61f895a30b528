"""Pretrained learned optimizers shipped inside the package.

Each ``learned_opt/pretrained/<name>.safetensors`` was written by a ``meta-train`` preset of this
repository (the file's provenance holds the resolved config and the command), so anyone can
reproduce it::

  meta-train --preset default --run-dir runs/default   # -> runs/default/optimizer.safetensors

A file meta-trained with ``estimator.horizon_aware=true`` saw, in every inner training, the
length of that training as ``num_steps`` (the horizon features ``(t/T, log10(T)/5)`` of
:func:`learned_opt.features.horizon_features`), so it learned its own warm-up and decay over a
run of known length. Give it the length of your run::

  info = learned_opt.pretrained_info("default")     # info.horizon_aware: pass num_steps?
  tx = learned_opt.pretrained("default", num_steps=10_000)
  tx = learned_opt.pretrained("default", learning_rate=0.5, num_steps=10_000)  # half the step
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import warnings
from typing import Any

import optax

from learned_opt import serialization
from learned_opt import upgrade

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
_SUFFIX = ".safetensors"

# Names already warned about (NoHorizonWarning is raised once per name and process).
_WARNED: set[str] = set()


class NoHorizonWarning(UserWarning):
  """A horizon-aware pretrained optimizer was built without ``num_steps``."""


@dataclasses.dataclass(frozen=True)
class PretrainedInfo:
  """What a shipped optimizer file says about itself (from its provenance).

  Attributes:
    name: the name given to :func:`pretrained`.
    path: the file.
    architecture: the registered architecture name (e.g. ``"mlp"``).
    horizon_aware: meta-trained with each run's length as ``num_steps`` (the optimizer's
      ``horizon_aware``); pass ``num_steps`` to :func:`pretrained` for it.
    family: the task family it was meta-trained on (``None`` if the file does not say).
    command: the ``meta-train`` command that wrote it (``None`` if the file does not say).
    provenance: the file's whole provenance dict.
  """

  name: str
  path: str
  architecture: str
  horizon_aware: bool
  family: str | None
  command: str | None
  provenance: dict[str, Any]


def list_pretrained() -> list[str]:
  """Names of the pretrained optimizers shipped with the package, sorted."""
  if not os.path.isdir(_DIR):
    return []
  return sorted(f[: -len(_SUFFIX)] for f in os.listdir(_DIR) if f.endswith(_SUFFIX))


def pretrained_path(name: str = "default") -> str:
  """Path of the shipped file for ``name``; ``ValueError`` listing the names if unknown."""
  names = list_pretrained()
  if name not in names:
    raise ValueError(f"No pretrained learned optimizer named {name!r}; shipped: {names}")
  return os.path.join(_DIR, name + _SUFFIX)


def load_pretrained(name: str = "default"):
  """Returns ``(lopt, meta_params)`` of the shipped optimizer ``name``."""
  return serialization.load(pretrained_path(name))


def pretrained_info(name: str = "default") -> PretrainedInfo:
  """What the shipped optimizer ``name`` is and how it was meta-trained.

  Args:
    name: one of :func:`list_pretrained`.

  Returns:
    A :class:`PretrainedInfo`; ``.horizon_aware`` says whether :func:`pretrained` should be
    given ``num_steps``.

  Example::

    info = learned_opt.pretrained_info("default")
    tx = learned_opt.pretrained("default", num_steps=n if info.horizon_aware else None)
  """
  path = pretrained_path(name)
  lopt, _, prov = serialization.read(path)
  return PretrainedInfo(name=name, path=path, architecture=lopt.name,
                        horizon_aware=lopt.horizon_aware,
                        family=upgrade.trained_family(prov),  # descriptive only: never used
                        command=prov.get("command"), provenance=prov)


def _check_num_steps(num_steps) -> None:
  if num_steps is None:
    return
  if (isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral)
      or num_steps < 1):
    hint = ("; under optax.inject_hyperparams, make it static: "
            "static_args=('num_steps',)") if hasattr(num_steps, "shape") else ""
    raise ValueError(f"num_steps must be a positive int (the number of updates the run will "
                     f"apply) or None, got {num_steps!r} ({type(num_steps).__name__}){hint}")


def pretrained(name: str = "default", learning_rate: optax.ScalarOrSchedule = 1.0, *,
               num_steps: int | None = None) -> optax.GradientTransformationExtraArgs:
  """A ready optax optimizer from the shipped meta-parameters ``name``.

  The update is the learned step times ``learning_rate``:

  .. math::
    u_t = η_t \\cdot f_θ(\\text{features}_t,\\; ψ(t, T)), \\qquad
    ψ(t, T) = (t / T,\\; \\log_{10}(T) / 5)

  with ``η_t`` = ``learning_rate`` (at step ``t`` if a schedule) and ``T`` = ``num_steps``.

  * **Horizon-aware optimizers** (:func:`pretrained_info` ``(name).horizon_aware``: meta-trained
    seeing each run's length) should get ``num_steps``, the number of updates your run will
    apply (with ``optax.MultiSteps``, the number of real updates, not of micro-batches). They
    then follow the warm-up and decay they learned over a run of that length. Without it
    ``ψ = (0, 0)`` at every step: the optimizer sees each step as the first of a run, so it
    neither warms up nor decays (an ``MLPOptimizer`` from :func:`learned_opt.inits.adam_like`
    keeps its initial rate, its ``exp(-k t/T)`` decay needs ``T``; a chain ending in
    :class:`learned_opt.CosineDecay`, as ``"default"`` does, keeps only its learned scale
    ``e^β``, its cosine decay over ``T`` needs ``T`` too). It still descends, with the
    step it learned for the start of a run, but it does not anneal, so it typically settles at
    a higher loss than with ``num_steps``: not what was meta-trained. A
    :class:`NoHorizonWarning` says so, once per name and process (silence it with
    ``warnings.simplefilter("ignore", learned_opt.NoHorizonWarning)``). Beyond ``num_steps``
    updates ``t/T > 1`` extrapolates the learned schedule: pass the full length.
  * **Other optimizers** never saw a horizon in meta-training, so their horizon weights are
    untrained: ``num_steps`` is validated and then ignored, so that
    ``pretrained(name, num_steps=N)`` is right for every shipped optimizer. (To feed it
    anyway: ``lopt, θ = load_pretrained(name); lopt.transform(θ, num_steps=N)``.)

  ``learning_rate`` multiplies the learned step after it is computed, so the optimizer's state
  and features do not depend on it: for the same gradients and parameters every update scales
  exactly linearly (``0.5`` halves each step). A float, an array or an optax schedule (applied
  on top of a horizon-aware optimizer's own decay, which it does not replace);
  ``optax.inject_hyperparams(pretrained, static_args=("num_steps",))`` makes it changeable
  between steps. ``1.0`` is the step as meta-trained; other values are a
  knob for models far from the meta-training distribution, not a required tuning.

  Args:
    name: one of :func:`list_pretrained`.
    learning_rate: multiplier on the learned step (1.0 = as meta-trained).
    num_steps: the number of updates of the training run (a positive int), or None.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ValueError: for an unknown ``name`` (listing the shipped ones) or a ``num_steps`` that is
      not a positive int.

  Example::

    tx = learned_opt.pretrained("default", num_steps=5_000)   # was: optax.adam(1e-3)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)          # loss= may be passed too
    params = optax.apply_updates(params, updates)

  References:
    Metz et al., *VeLO: Training Versatile Learned Optimizers by Scaling Up*, 2022,
    arXiv 2211.09760 (its optimizer, too, is given the run's length).
  """
  _check_num_steps(num_steps)
  lopt, meta_params = serialization.load(pretrained_path(name))  # one read, one check
  if not lopt.horizon_aware:
    num_steps = None
  elif num_steps is None and name not in _WARNED:
    _WARNED.add(name)
    warnings.warn(
        f"learned_opt.pretrained({name!r}) was meta-trained horizon-aware but got no "
        "num_steps: its horizon features are zero, so it will not warm up or decay as it "
        "learned to. Pass num_steps=<number of updates of your run>.",
        NoHorizonWarning, stacklevel=2)
  return lopt.transform(meta_params, learning_rate, num_steps=num_steps)
