"""Named evaluation suites and what they are built from: the optimizer file and its provenance.

* ``in_distribution``: held-out tasks of the optimizer's training family (``task.family`` of
  the provenance's config: a registered name, or a user's import path resolved again here),
  ``num_steps`` steps, against every baseline of the registry.
* ``out_of_distribution``: the registered families absent from the training set (a
  ``mixture``'s members count as trained; the ``mixture`` itself and ``lm_transformer_small``,
  a costlier copy of ``lm_transformer_tiny``, are left out), same measures.
* ``long_horizon``: the training family at 10x the meta-training horizon
  (``estimator.max_horizon``): the bar is no diverged run, and the final loss is compared with tuned
  constant Adam run for the same length (speed-ups there are capped at 1).

Held-out draws come from their own PRNG streams: the evaluation seed folded with a fixed tag,
the stream's tag (``dev`` for recipe work, ``report`` for committed reports) and the family's
name, never a key of meta-training's ``jax.random.key(run.seed)`` tree.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any

import jax
import numpy as np

import learned_opt
import tasks
from meta_train.evaluation import baselines as baselines_lib
from meta_train.evaluation import config as config_lib
from meta_train.evaluation import curves as curves_lib

EVAL_STREAM_TAG = 0x6D657661  # "meva": folded into the root key of every evaluation draw
# Folded in after it: ``dev`` keeps the draws every report before the split used (recipe work
# was tuned on them); ``report`` is a second stream, for committed reports only.
DRAW_TAGS = {"dev": None, "report": 0x72657074}  # "rept"
LONG_HORIZON_FACTOR = 10
PRETRAINED_PREFIX = "pretrained:"

# What kind of learning problem each registered family is (out-of-distribution coverage).
KINDS = {
    "quadratic": "quadratic",
    "digits_mlp": "MLP classifier",
    "gaussian_mixture_mlp": "MLP classifier",
    "mnist1d_mlp": "MLP classifier",
    "digits_conv": "conv classifier",
    "mnist1d_conv": "conv classifier",
    "lm_transformer_tiny": "transformer LM",
    "lm_transformer_small": "transformer LM",
    "diffusion_toy2d": "diffusion",
    "diffusion_digits": "diffusion",
    "mixture": "mixture",
}


class EvalError(ValueError):
  """A bad evaluation request; ``str()`` is one line naming the bad value and the choices."""


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """A learned optimizer to evaluate.

  Attributes:
    label: how reports name it (``pretrained:NAME`` or the file path as given).
    lopt: the learned optimizer.
    meta_params: its meta-parameters.
    provenance: the file's provenance dict (``{}`` if none).
  """

  label: str
  lopt: Any
  meta_params: Any
  provenance: dict

  @property
  def run_config(self) -> dict:
    return self.provenance.get("config") or {}

  @property
  def horizon_aware(self) -> bool:
    """Meta-trained with each run's horizon as ``num_steps`` (the optimizer's own field)."""
    return bool(self.lopt.horizon_aware)


def load_optimizer(spec: str) -> Optimizer:
  """Loads ``pretrained:NAME`` or a ``.safetensors`` file; :class:`EvalError` if it cannot."""
  if spec.startswith(PRETRAINED_PREFIX):
    name = spec[len(PRETRAINED_PREFIX):]
    names = learned_opt.list_pretrained()
    if name not in names:
      raise EvalError(f"unknown pretrained optimizer {name!r}; valid: "
                      f"{', '.join(PRETRAINED_PREFIX + n for n in names)}")
    path = learned_opt.pretrained_path(name)
  else:
    path = spec
    if not os.path.isfile(path):
      raise EvalError(f"optimizer file {spec!r} not found; give a .safetensors file written by "
                      f"learned_opt.save, or one of: "
                      f"{', '.join(PRETRAINED_PREFIX + n for n in learned_opt.list_pretrained())}")
  try:
    lopt, meta_params, provenance = learned_opt.read(path)  # one read, one check
  except (learned_opt.FileFormatError, ValueError, OSError) as e:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise EvalError(f"malformed optimizer file {spec!r}: {first}") from None
  return Optimizer(spec, lopt, meta_params, provenance)


def training_family(opt: Optimizer) -> str:
  """The family the optimizer was meta-trained on (from its provenance): a registered name or
  an import path ``package.module:function``."""
  name = (opt.run_config.get("task") or {}).get("family")
  if not name:
    raise EvalError(f"optimizer {opt.label!r} has no training family in its provenance; "
                    f"name families with --family (valid: {', '.join(tasks.family_names())})")
  return name


def training_families(opt: Optimizer) -> set[str]:
  """Every family the optimizer saw in meta-training (a mixture's members included)."""
  name = training_family(opt)
  seen = {name}
  if name in tasks.family_names():
    family = tasks.get(name)
    kwargs = (opt.run_config.get("task") or {}).get("kwargs") or {}
    members = kwargs.get("members", getattr(family, "members", ()))
    seen |= {m for m in members if isinstance(m, str)}
  return seen


def _tuples(value: Any) -> Any:
  """JSON lists (of a provenance's kwargs) back as the tuples family dataclasses hold."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def get_family(name: str, opt: Optimizer | None = None):
  """``tasks.get(name)`` (a registered name or an import path ``package.module:function``);
  :class:`EvalError` when it does not give a family (e.g. the module of the path an optimizer
  was meta-trained on cannot be imported here)."""
  try:
    return tasks.get(name)
  except tasks.UnknownFamilyError as e:
    if opt is not None and tasks.is_import_path(name):
      raise EvalError(f"optimizer {opt.label!r} was meta-trained on {e}") from None
    raise EvalError(str(e)) from None


def build_family(name: str, opt: Optimizer):
  """The family ``name`` as the optimizer saw it: its training family with the provenance's
  ``task.kwargs`` (e.g. a mixture's own members), any other family as registered (or as its
  import path builds it)."""
  task = opt.run_config.get("task") or {}
  family = get_family(name, opt if name == task.get("family") else None)
  kwargs = task.get("kwargs") or {}
  if name != task.get("family") or not kwargs:
    return family
  try:
    return dataclasses.replace(family, **_tuples(kwargs))
  except (TypeError, ValueError) as e:
    raise EvalError(f"optimizer {opt.label!r}: its provenance's task.kwargs {kwargs} do not "
                    f"build family {name!r}: {e}") from None


def training_horizon(opt: Optimizer) -> int:
  """The longest meta-training inner horizon (``estimator.max_horizon``; ``horizon`` in files
  written before the estimator fields were renamed) from the provenance."""
  est = opt.run_config.get("estimator") or {}
  horizon = est.get("max_horizon", est.get("horizon"))
  if not isinstance(horizon, int) or horizon <= 0:
    raise EvalError(f"optimizer {opt.label!r} has no estimator.max_horizon in its provenance; "
                    "evaluate it with --family and --num-steps instead of --suite long_horizon")
  return horizon


# Left out of the out-of-distribution suite: the mixture (its members are families of their
# own) and lm_transformer_small, a larger copy of lm_transformer_tiny (the same kind at about
# five times the cost on a CPU); name it with --family to evaluate it.
OOD_EXCLUDED = ("mixture", "lm_transformer_small")


def out_of_distribution_families(opt: Optimizer) -> list[str]:
  """Registered families absent from the optimizer's training set (minus :data:`OOD_EXCLUDED`)."""
  seen = training_families(opt)
  return [n for n in tasks.family_names() if n not in seen and n not in OOD_EXCLUDED]


@dataclasses.dataclass(frozen=True)
class FamilyPlan:
  """One family of a suite: its name, run length and baselines."""

  family: str
  num_steps: int
  baselines: tuple[str, ...]
  envelope_factor: float = config_lib.MAX_SPEEDUP


def plan(suite: str, opt: Optimizer, config, baselines=config_lib.BASELINES,
         families=None) -> list[FamilyPlan]:
  """The families, lengths and baselines of ``suite`` for optimizer ``opt`` (long horizon:
  tuned constant Adam only, run as long as the learned optimizer).

  ``families`` (long horizon only) replaces the training family by these, each at 10x the
  training horizon: e.g. one member of a mixture on its own draws, so that a member that a
  mixture's suite samples only a few times gets as many long runs as asked for.
  """
  if suite not in config_lib.SUITES:
    raise EvalError(f"unknown suite {suite!r}; valid: {', '.join(config_lib.SUITES)}")
  if families and suite != "long_horizon":
    raise EvalError(f"suite {suite!r} names its own families; only long_horizon takes families")
  baselines = tuple(baselines)
  if suite == "in_distribution":
    return [FamilyPlan(training_family(opt), config.num_steps, baselines)]
  if suite == "out_of_distribution":
    return [FamilyPlan(f, config.num_steps, baselines)
            for f in out_of_distribution_families(opt)]
  length = LONG_HORIZON_FACTOR * training_horizon(opt)
  return [FamilyPlan(f, length, ("adam",), envelope_factor=1.0)
          for f in (families or [training_family(opt)])]


def check_families(names) -> None:
  """:class:`EvalError` naming the first unregistered family and the valid ones (an import
  path ``package.module:function`` is built, so its errors come before any compute)."""
  for n in names:
    if tasks.is_import_path(n):
      get_family(n)
    elif n not in tasks.family_names():
      raise EvalError(f"unknown family {n!r}; valid: {', '.join(tasks.family_names())}, or an "
                      f"import path package.module:function")


def eval_key(seed: int, family_name: str, draws: str = "dev") -> jax.Array:
  """The root key of a family's held-out draws of stream ``draws`` (disjoint from
  meta-training's key tree, and the two streams from each other)."""
  if draws not in DRAW_TAGS:
    raise EvalError(f"unknown draws {draws!r}; valid: {', '.join(DRAW_TAGS)}")
  key = jax.random.fold_in(jax.random.key(seed), EVAL_STREAM_TAG)
  if DRAW_TAGS[draws] is not None:
    key = jax.random.fold_in(key, DRAW_TAGS[draws])
  return jax.random.fold_in(key, zlib.crc32(family_name.encode()) & 0x7FFFFFFF)


def _is_diffusion(family) -> bool:
  return isinstance(family, (tasks.Toy2DFamily, tasks.DigitsFamily))


def energy_distance_metric(task, params, key, num_samples: int = 256):
  """Energy distance between the trained model's samples and the test split's data."""
  k_sample, k_ref = jax.random.split(key)
  x = tasks.diffusion.sample(task, params, k_sample, num_samples)
  return tasks.diffusion.energy_distance(x, task.heldout(k_ref, num_samples, "test"))


def problems(family, family_name: str, config) -> list[baselines_lib.Problem]:
  """The held-out runs of a family as groups of one member family each.

  A mixture's tasks are grouped by the member they drew and run as ``vmap`` s of that member's
  family (the same tasks as the mixture's, without computing every member at every step).
  """
  key = eval_key(config.seed, family_name, config.draws)
  task_params, keys = curves_lib.draw(family, key, config.num_tasks, config.num_seeds)
  if isinstance(family, tasks.MixtureFamily):
    index = np.asarray(task_params["index"])
    groups = []
    for i, member in enumerate(family.families):
      sel = np.nonzero(index == i)[0]
      if len(sel):
        sub = jax.tree.map(lambda x, s=sel: x[s], task_params["params"][i])
        groups.extend(_problem(member, f"{family_name}/{member.name}", sub, keys[sel]))
    return groups
  return _problem(family, family_name, task_params, keys)


def _problem(family, name, task_params, keys):
  metric = energy_distance_metric if _is_diffusion(family) else None
  return [baselines_lib.Problem(family, f"{name}:{family!r}", task_params, keys, metric)]
