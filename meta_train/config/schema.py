"""The schema of a meta-training run's config: frozen dataclasses, presets, JSON, resume rules.

A run is described by one :class:`RunConfig`, a tree of frozen dataclasses whose fields carry
their ``--help`` text. :data:`PRESETS` names complete configs (``smoke``, ``quickstart``,
``default``, ``diffusion``, ``specialize``). The estimator section's fields are named as the
estimator fields they set (:mod:`meta_train.estimators.registry`), with their defaults.
Parsing is generic (:mod:`meta_train.config.parsing`); checks and the building of the objects
a config describes are in :mod:`meta_train.config.validation`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal, Mapping

from meta_train.config import parsing
from meta_train.estimators import grouped
from meta_train.estimators import registry

# The estimator names, from the registry (so --help, the Literal and its error follow it).
EstimatorName = Literal[tuple(registry.ESTIMATORS)]  # type: ignore[valid-type]


def _f(default=dataclasses.MISSING, *, help: str, factory=None):  # pylint: disable=redefined-builtin
  """A dataclass field with a help string (shown by ``meta-train --help``)."""
  if factory is not None:
    return dataclasses.field(default_factory=factory, metadata={"help": help})
  return dataclasses.field(default=default, metadata={"help": help})


def _est(field: str, *, help: str):  # pylint: disable=redefined-builtin
  """An ``estimator.*`` field: its default is the estimator's own (one source of defaults),
  its help names the estimators that take it when not all do."""
  takers = registry.estimators_with(field)
  if len(takers) < len(registry.ESTIMATORS):
    help = f"{help} ({', '.join(takers)})"
  return _f(registry.field_default(field), help=help)


@dataclasses.dataclass(frozen=True)
class StartConfig:
  """Where meta-training starts: ``lopt.init`` or a start of :mod:`learned_opt.inits`."""

  scheme: Literal["lecun", "adam_like", "tuned_adam_like", "file"] = _f(
      "lecun", help="lecun: lopt.init (random, tiny steps); adam_like: "
                    "learned_opt.inits.adam_like (a normalised Adam step); tuned_adam_like: "
                    "adam_like at the family's tuned constant-Adam rate, from a short sweep "
                    "before meta-training (meta_train/recipe/tuned_start.py; recorded in the "
                    "run directory's start.json and the optimizer's provenance); file: the "
                    "parts of the optimizer file optimizer.start.path, by name (the others: "
                    "lopt.init; meta_train/recipe/frozen.py)")
  learning_rate: float = _f(5e-3, help="adam_like: the RMS over each tensor of the first step")
  decay: float = _f(0.0, help="adam_like: k of the initial decay exp(-k t/T) of the step")
  path: str | None = _f(None, help="file: an optimizer file (learned_opt.save; a relative path "
                                   "is read from the working directory) or pretrained:NAME")


# Which optimizer.start fields each scheme reads (the others must keep their defaults).
START_FIELDS = {"lecun": (), "adam_like": ("learning_rate", "decay"),
                "tuned_adam_like": ("decay",), "file": ("path",)}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The learned optimizer to meta-train: an architecture of ``learned_opt.registry()``.

  Its ``horizon_aware`` field (when it has one) is set from ``estimator.horizon_aware``.
  """

  name: str = _f("mlp", help="architecture name in learned_opt.registry()")
  kwargs: dict[str, Any] = _f(help="constructor arguments of the architecture", factory=dict)
  start: StartConfig = _f(help="where meta-training starts", factory=StartConfig)
  frozen: tuple[str, ...] = _f((), help="parts of a chain meta-training leaves at the start "
                                        "file's values (optimizer.start.scheme=file): Celo's "
                                        "second phase, a schedule meta-trained on a frozen rule")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """The task family inner trainings are drawn from: a name of ``tasks.family_names()``, or
  a user's own as an import path ``"package.module:function"`` (a no-argument function
  returning a ``tasks.TaskFamily``; :func:`tasks.get`)."""

  family: str = _f("quadratic", help="task family name in tasks.family_names(), or "
                                     "package.module:function returning a tasks.TaskFamily")
  kwargs: dict[str, Any] = _f(help="fields of the family's dataclass to override", factory=dict)


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
  """The meta-gradient estimator (``meta_train.estimators.registry.build_estimator``).

  Each field is the estimator's or its ``UnrollConfig``'s field of the same name, with the
  default the class declares (:func:`meta_train.estimators.registry.field_default`). A field
  the chosen estimator does not take (``num_particles`` for the antithetic ones, ``num_pairs``
  and ``sigma`` for tbptt) must keep its default: setting it is refused by
  :func:`meta_train.config.validate`.
  """

  name: EstimatorName = _f("pes", help="; ".join(
      f"{n}: {c.__doc__.splitlines()[0].rstrip('.')}" for n, c in registry.ESTIMATORS.items()))
  num_pairs: int = _est("num_pairs", help="antithetic pairs per estimate, 2 * num_pairs inner "
                                            "trainings")
  num_particles: int = _est("num_particles", help="inner trainings per estimate")
  sigma: float = _est("sigma", help="std of the meta-parameter perturbation")
  sign_delta: float = _est("sign_delta", help="0: each antithetic pair's loss difference as "
                                              "is; s > 0: s * the sign of its mean (VeLO's "
                                              "sign_delta_loss_scalar)")
  truncation_length: int = _est("truncation_length", help="inner steps per truncated unroll "
                                                          "(full_es: one unroll of the horizon)")
  min_horizon: int = _est("min_horizon", help="shortest inner training before its task is "
                                              "reset; horizons are log-uniform in "
                                              "[min_horizon, max_horizon]")
  max_horizon: int = _est("max_horizon", help="longest inner training (= min_horizon: a fixed "
                                              "horizon)")
  stagger: bool = _est("stagger", help="start particles at random points of their first inner "
                                       "run (not full_es)")
  meta_loss: Literal["train", "valid"] = _est(
      "meta_loss", help="mean normalised loss on train batches, or on a held-out valid batch")
  log_meta_loss: bool = _est("log_meta_loss", help="meta-loss is the mean of log(normalised "
                                                   "loss + 1e-8) (weighs the end of a run as "
                                                   "much as its start)")
  end_weight: float = _est("end_weight", help="p: each step's meta-loss weighted by (p+1) "
                                             "(t/T)^p, t/T its run's fraction done (0: every "
                                             "step alike; larger p: the end of the run)")
  final_batches: int = _est("final_batches", help="the meta-loss is the run's final "
                                                  "loss recomputed on this many fresh batches "
                                                  "(VeLO's last_recompute; 0: the mean over "
                                                  "steps)")
  horizon_aware: bool = _est("horizon_aware", help="pass each inner run's horizon to the "
                                                   "optimizer as num_steps (evaluate it with "
                                                   "num_steps too)")
  param_scale: float = _est("param_scale", help="task augmentation: parameter tensors rescaled "
                                                "by log-uniform factors in [1/x, x] per run "
                                                "(1: none)")
  loss_clip: float = _est("loss_clip", help="clip each normalised loss at this value, a "
                                            "non-finite one counting as it (about x the "
                                            "initial loss; learned_optimization: 1.3; 0: the "
                                            "task's ceiling)")
  rise_penalty: float = _est("rise_penalty", help="l: each step's meta-loss plus l times its "
                                                  "rise over the run's lowest earlier loss "
                                                  "in the truncation (0: none)")
  group_by_member: bool = _f(False, help="with a mixture family: one particle group per "
                                        "member family, combined with the mixture's weights "
                                        "(meta_train/estimators/grouped.py)")
  member_pairs: tuple[int, ...] | None = _f(None, help="with group_by_member: pairs (tbptt: "
                                                       "particles) of each member's group "
                                                       "(default: num_pairs each)")
  group_clip: float = _f(grouped.GroupedEstimator.group_clip,
                         help="with group_by_member: clip each group's meta-gradient to this "
                              "global norm before the weighted sum (0: no clip)")
  member_overrides: dict[str, Any] = _f(
      help="with group_by_member: {member: {field: value}}, estimator settings of one "
           "member's group in place of this section's (e.g. {\"digits_mlp\": "
           "{\"rise_penalty\": 1}})", factory=dict)


@dataclasses.dataclass(frozen=True)
class OuterConfig:
  """The outer (meta) optimizer applied to the estimated meta-gradient."""

  optimizer: Literal["adam", "sgd"] = _f("adam", help="outer optimizer")
  lr: float = _f(1e-3, help="outer learning rate")
  clip: float = _f(1.0, help="clip the meta-gradient's global norm to this (0 disables)")
  schedule: Literal["constant", "cosine"] = _f(
      "constant", help="learning-rate schedule over run.num_outer_steps")
  warmup_steps: int = _f(0, help="linear warm-up steps of the outer learning rate")


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """Length, seeding, dispatch, checkpointing and logging cadence of the run."""

  seed: int = _f(0, help="PRNG seed of the whole run")
  num_outer_steps: int = _f(1000, help="total outer steps")
  steps_per_dispatch: int = _f(1, help="outer steps per jitted call (divides the cadences)")
  checkpoint_every: int = _f(100, help="outer steps between orbax checkpoints")
  max_to_keep: int = _f(3, help="checkpoints kept on disk")
  log_every: int = _f(10, help="outer steps between logged metrics")
  progress: Literal["auto", "on", "off"] = _f(
      "auto", help="tqdm bar: auto (only on a terminal), on, off")
  num_devices: int | None = _f(None, help="devices the particles (pairs) are sharded over "
                                          "(default: all devices of all processes)")


@dataclasses.dataclass(frozen=True)
class WandbConfig:
  """Weights & Biases logging (offline by default, into the run directory)."""

  mode: Literal["offline", "online", "disabled"] = _f("offline", help="wandb mode")
  project: str = _f("learned_opt", help="wandb project")
  entity: str | None = _f(None, help="wandb entity (team or user)")
  name: str | None = _f(None, help="wandb run name (default: the run directory's name)")


# The one evaluation config, shared with ``meta-eval`` (a jax-free module).
from meta_train.evaluation.config import EvalConfig  # pylint: disable=wrong-import-position


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The whole configuration of a meta-training run."""

  optimizer: OptimizerConfig = _f(help="learned optimizer", factory=OptimizerConfig)
  task: TaskConfig = _f(help="task family", factory=TaskConfig)
  estimator: EstimatorConfig = _f(help="meta-gradient estimator", factory=EstimatorConfig)
  outer: OuterConfig = _f(help="outer optimizer", factory=OuterConfig)
  run: RunSettings = _f(help="run settings", factory=RunSettings)
  wandb: WandbConfig = _f(help="wandb", factory=WandbConfig)
  eval: EvalConfig = _f(help="final evaluation", factory=EvalConfig)


# Fields that may change when a run is resumed: they do not affect the trajectory of the
# meta-parameters. Everything else must match the run directory's config.json.
RESUMABLE_FIELDS = frozenset({
    "run.num_outer_steps", "run.checkpoint_every", "run.max_to_keep", "run.log_every",
    "run.progress", "wandb.mode", "wandb.project", "wandb.entity", "wandb.name", "eval.enabled",
    "eval.num_tasks", "eval.num_seeds", "eval.num_steps", "eval.learning_rates",
    "eval.max_learning_rate", "eval.min_learning_rate", "eval.warmup_fraction", "eval.seed",
    "eval.smoothing_window", "eval.bootstrap_samples", "eval.draws", "eval.eval_points",
    "run.num_devices",  # sharding hook: a run may resume on another device count
})


# ---------------------------------------------------------------------------------------------
# Presets.

# The member families of the default and diffusion presets' mixtures.
DEFAULT_MEMBERS = ("digits_mlp", "gaussian_mixture_mlp", "mnist1d_mlp", "quadratic",
                   "diffusion_toy2d", "diffusion_digits")
DIFFUSION_MEMBERS = ("diffusion_toy2d", "diffusion_digits")

# The presets' start: a normalised Adam step of RMS 5e-3 without the start's own
# exp(-decay t/T), for a chain whose last part decays it (learned_opt.CosineDecay anneals every
# step; a decaying start would decay it twice).
_UNDECAYED_ADAM_START = StartConfig("adam_like", learning_rate=5e-3, decay=0.0)
# quickstart's (and specialize's) rule: MLPOptimizer((16, 16)).
_QUICKSTART_RULE = {"hidden_sizes": (16, 16)}
# A chain's last part: the fixed warm-up + cosine decay over the run (learned_opt.CosineDecay,
# Celo's first phase; reports/experiments/LOG.md #99-#102).
COSINE_DECAY = {"name": "cosine_decay", "config": {}}
# A chain's first part: the gradient's global norm clipped at 1 before the rule reads it
# (learned_opt.ClipGradients; reports/experiments/LOG.md #140-#142).
CLIP_AT_1 = {"name": "clip", "config": {"max_norm": 1.0}}
# Each tensor's step scaled by its RMS read at the first step and held, floor 0.3
# (learned_opt.ParamScale(at_init=True); reports/experiments/LOG.md #118-#122).
PARAM_SCALE_AT_INIT = {"name": "param_scale",
                       "config": {"reference_rms": 0.3, "floor": 0.3, "at_init": True}}


def in_harness(rule: dict[str, Any], *after: dict[str, Any],
               before: tuple[dict[str, Any], ...] = (), **harness: Any) -> dict[str, Any]:
  """``optimizer.kwargs`` of a chain: the parts ``before`` (e.g. :data:`CLIP_AT_1`), the MLP
  rule (its ``rule`` kwargs), then the orthogonalising harness (``learned_opt.Orthogonalize``
  with the ``harness`` kwargs: Muon's direction for each weight matrix, the rule's magnitude;
  reports/experiments/LOG.md #59-#63), then the parts ``after`` (``{"name", "config"}``
  mappings, e.g. :data:`COSINE_DECAY`)."""
  def copy(part):
    return {"name": part["name"], "config": dict(part["config"])}
  return {"parts": (*(copy(part) for part in before),
                    {"name": "mlp", "config": dict(rule)},
                    {"name": "orthogonalize", "config": dict(harness)},
                    *(copy(part) for part in after))}


PRESETS: dict[str, RunConfig] = {
    # Under a minute on CPU, compile included: a few outer steps on 4-d quadratics.
    "smoke": RunConfig(
        optimizer=OptimizerConfig("mlp", {"hidden_sizes": (8, 8)}),
        task=TaskConfig("quadratic", {"dim": 4}),
        estimator=EstimatorConfig("pes", num_pairs=2, truncation_length=5, min_horizon=20,
                                  max_horizon=20, sigma=0.01),
        outer=OuterConfig(lr=1e-3),
        run=RunSettings(num_outer_steps=20, checkpoint_every=10, log_every=5, max_to_keep=2),
    ),
    # The README's main job (under 15 minutes on 2 CPU cores, evaluation included): a small
    # learned optimizer meta-trained on MLP classifiers of the bundled 8x8 digits. The recipe
    # is the best measured (docs/findings.md; reports/experiments/LOG.md #13, #59-#63,
    # #99-#101): the MLP rule inside the orthogonalising harness under a fixed warm-up + cosine
    # decay, an Adam-like start, horizon-aware unrolls, the held-out (valid) meta-loss and a
    # cosine outer schedule.
    "quickstart": RunConfig(
        optimizer=OptimizerConfig("chain", in_harness(_QUICKSTART_RULE, COSINE_DECAY),
                                  _UNDECAYED_ADAM_START),
        task=TaskConfig("digits_mlp", {}),
        estimator=EstimatorConfig("pes", num_pairs=8, truncation_length=20, min_horizon=200,
                                  max_horizon=200, sigma=0.01, meta_loss="valid",
                                  horizon_aware=True),
        outer=OuterConfig(lr=3e-3, clip=1.0, schedule="cosine"),
        run=RunSettings(num_outer_steps=1500, steps_per_dispatch=10, checkpoint_every=250,
                        log_every=50),
        eval=EvalConfig(enabled=True, num_tasks=8, num_seeds=2, num_steps=200),
    ),
    # The shipped general optimizer (learned_opt.pretrained("default")): quickstart's rule
    # inside the orthogonalising harness under the cosine decay, from the undecayed Adam-like
    # start (reports/experiments/LOG.md #69, #112-#115), behind the gradient clip at 1 and with
    # each tensor's step scaled by its held initial RMS (#121, #141), on the MLP classifiers,
    # the quadratics and both diffusion families, one particle group per member
    # (meta_train/estimators/grouped.py; the conv diffusion family gets fewer pairs, it costs
    # ~20x an MLP classifier's step), horizons of 100-500 steps. Each step's rise over the
    # run's lowest loss costs 3x (#128-#132) in every group but the three classifiers' (1x:
    # more caution slows them); the meta-loss is the train loss, which the evaluation's
    # headline reads (#147). Conv classifiers and transformer LMs stay out: they are its
    # out-of-distribution suite.
    "default": RunConfig(
        optimizer=OptimizerConfig(
            "chain", in_harness(_QUICKSTART_RULE, PARAM_SCALE_AT_INIT, COSINE_DECAY,
                                before=(CLIP_AT_1,)),
            _UNDECAYED_ADAM_START),
        task=TaskConfig("mixture", {"members": DEFAULT_MEMBERS}),
        estimator=EstimatorConfig("pes", truncation_length=20, min_horizon=100,
                                  max_horizon=500, sigma=0.01, meta_loss="train",
                                  horizon_aware=True, rise_penalty=3.0, group_by_member=True,
                                  member_pairs=(4, 4, 4, 4, 4, 2),
                                  member_overrides={member: {"rise_penalty": 1} for member in
                                                    ("digits_mlp", "gaussian_mixture_mlp",
                                                     "mnist1d_mlp")}),
        outer=OuterConfig(lr=3e-3, clip=1.0, schedule="cosine", warmup_steps=50),
        run=RunSettings(num_outer_steps=1000, steps_per_dispatch=10, checkpoint_every=100,
                        log_every=50),
        eval=EvalConfig(enabled=True),
    ),
    # The shipped diffusion optimizer (learned_opt.pretrained("diffusion")): quickstart's rule
    # inside the orthogonalising harness under the cosine decay, from the undecayed Adam-like
    # start, behind the gradient clip at 1, on the two diffusion families (2-D toy data with an
    # MLP denoiser, 8x8 digits with a conv one; every target, noise schedule and loss weighting
    # they draw; reports/experiments/LOG.md #116-#117). The meta-loss is the train loss, which
    # the evaluation's headline reads; the clip keeps it from diverging on the digit denoiser's
    # long runs (#149-#151, #153).
    "diffusion": RunConfig(
        optimizer=OptimizerConfig("chain", in_harness(_QUICKSTART_RULE, COSINE_DECAY,
                                                      before=(CLIP_AT_1,)),
                                  _UNDECAYED_ADAM_START),
        task=TaskConfig("mixture", {"members": DIFFUSION_MEMBERS}),
        estimator=EstimatorConfig("pes", truncation_length=20, min_horizon=100,
                                  max_horizon=300, sigma=0.01, meta_loss="train",
                                  horizon_aware=True, group_by_member=True,
                                  member_pairs=(8, 2)),
        outer=OuterConfig(lr=3e-3, clip=1.0, schedule="cosine", warmup_steps=50),
        run=RunSettings(num_outer_steps=600, steps_per_dispatch=10, checkpoint_every=100,
                        log_every=50),
        eval=EvalConfig(enabled=True, num_tasks=8, num_seeds=2),
    ),
}

# Specialise to one family (`--set task.family=F`, a registered name or a user's own
# `package.module:function`; default digits_mlp): quickstart's recipe (the rule inside the
# orthogonalising harness under the cosine decay from the Adam-like start at 5e-3, PES
# horizon-aware unrolls, the valid meta-loss, cosine outer schedule, evaluation) with conv
# kernels orthogonalised too
# (`Orthogonalize(kernels=True)`: each kernel as its (fan-in, out) matrix). The kernels are the
# one difference, and they change nothing on a family without conv kernels (digits_mlp, the
# transformer LM, the 2-D diffusion toy); on digits_conv they won on both seeds
# (reports/experiments/LOG.md #86-#89). Measured worse on digits_mlp: the train meta-loss
# (#54 against #53, #66 against #59) and a start at the family's tuned Adam rate inside the
# harness (#68 against #59/#60; `optimizer.start.scheme=tuned_adam_like` stays an override).
# An adapter given one data mapping draws its valid batches from the same data, and there the
# valid meta-loss is the train loss on fresh batches.
PRESETS["specialize"] = dataclasses.replace(
    PRESETS["quickstart"],
    optimizer=dataclasses.replace(PRESETS["quickstart"].optimizer,
                                  kwargs=in_harness(_QUICKSTART_RULE, COSINE_DECAY,
                                                    kernels=True)))


def preset(name: str) -> RunConfig:
  """The preset ``name``; raises ``ConfigError`` listing the known ones."""
  if name not in PRESETS:
    raise parsing.ConfigError("preset", f"unknown preset {name!r}; known presets: "
                                        f"{', '.join(PRESETS)}")
  return PRESETS[name]


# ---------------------------------------------------------------------------------------------
# JSON round trip, field listing, resume rules.


def to_dict(cfg: RunConfig) -> dict[str, Any]:
  """The config as nested JSON-compatible dicts (tuples become lists)."""
  return parsing.to_dict(cfg)


def to_json(cfg: RunConfig) -> str:
  """The config as indented JSON (what the run directory's ``config.json`` holds)."""
  return json.dumps(to_dict(cfg), indent=2, sort_keys=False) + "\n"


# Optimizer kwargs that older configs (run directories, file provenance) used for the start.
_OLD_START_KWARGS = {"init_learning_rate": "learning_rate", "init_decay": "decay"}


def _upgrade_start(data: Mapping[str, Any]) -> Mapping[str, Any]:
  """Moves an older config's ``optimizer.kwargs.init_*`` into ``optimizer.start``.

  Before starts were functions, ``MLPOptimizer`` took ``init_scheme`` (``"lecun"`` /
  ``"adam"``), ``init_learning_rate`` and ``init_decay``; a config without a ``start`` section
  that names them reads as the same start.
  """
  optimizer = data.get("optimizer") if isinstance(data, Mapping) else None
  if not isinstance(optimizer, Mapping) or "start" in optimizer:
    return data
  kwargs = optimizer.get("kwargs")
  if not isinstance(kwargs, Mapping) or "init_scheme" not in kwargs:
    return data
  kwargs = dict(kwargs)
  scheme = kwargs.pop("init_scheme")
  start = {"scheme": {"adam": "adam_like"}.get(scheme, scheme)}
  for old, new in _OLD_START_KWARGS.items():
    if old in kwargs:
      value = kwargs.pop(old)
      if start["scheme"] == "adam_like":  # the lecun start never read them
        start[new] = value
  return {**data, "optimizer": {**optimizer, "kwargs": kwargs, "start": start}}


def from_dict(data: Mapping[str, Any]) -> RunConfig:
  """Builds a :class:`RunConfig` from :func:`to_dict`'s output; missing fields take defaults.

  An older config's ``optimizer.kwargs.init_*`` become its ``optimizer.start``.

  Raises:
    ConfigError: for an unknown field or a value of the wrong type, naming its path.
  """
  return parsing.from_dict(RunConfig, _upgrade_start(data))


def from_json(text: str) -> RunConfig:
  """Inverse of :func:`to_json`."""
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise parsing.ConfigError("", f"config is not valid JSON: {e}") from None
  return from_dict(data)


def fields_table(cfg: RunConfig | None = None) -> list[tuple[str, str, Any, str]]:
  """``(path, type name, value, help)`` for every leaf field of ``cfg`` (default: defaults)."""
  return parsing.fields_table(RunConfig() if cfg is None else cfg)


def incompatible_fields(saved: RunConfig, new: RunConfig) -> list[tuple[str, Any, Any]]:
  """Differences that forbid resuming ``saved``'s run with ``new`` (trajectory-changing ones).

  ``run.num_outer_steps`` may change only with a constant outer schedule (a cosine schedule
  depends on it).
  """
  allowed = set(RESUMABLE_FIELDS)
  if saved.outer.schedule != "constant" or new.outer.schedule != "constant":
    allowed.discard("run.num_outer_steps")
  return [d for d in parsing.diff(saved, new) if d[0] not in allowed]
