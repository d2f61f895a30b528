"""Typed configuration of a meta-training run: frozen dataclasses, named presets, overrides.

A run is described by one :class:`RunConfig`, a tree of frozen dataclasses. It is built from a
named preset (:data:`PRESETS`: ``smoke``, ``quickstart``, ``default``) plus ``field.path=value``
overrides parsed against each field's type, and validated as a whole *before* anything is
compiled: an unknown field, a value of the wrong type or an impossible combination raises
:class:`ConfigError` naming the field. ``to_json`` / ``from_json`` round-trip exactly.

``optimizer.kwargs`` and ``task.kwargs`` are the constructor arguments of the learned optimizer
class (``learned_opt.registry()[optimizer.name]``) and of the task family
(``tasks.get(task.family)``, a frozen dataclass); their keys and value types are checked against
those classes' dataclass fields.

Example::

  cfg = resolve("smoke", ["estimator.num_particles=4", "run.num_outer_steps=20"])
  cfg.estimator.num_particles  # 4
  assert from_json(to_json(cfg)) == cfg
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal, Mapping, Sequence

ESTIMATORS = ("tbptt", "es", "pes", "full_es")
ANTITHETIC_ESTIMATORS = ("es", "pes", "full_es")


class ConfigError(ValueError):
  """An invalid configuration; ``str()`` names the offending field path."""

  def __init__(self, path: str, message: str):
    self.path = path
    super().__init__(f"{path}: {message}" if path else message)


def _f(default=dataclasses.MISSING, *, help: str, factory=None):  # pylint: disable=redefined-builtin
  """A dataclass field with a help string (shown by ``meta-train --help``)."""
  if factory is not None:
    return dataclasses.field(default_factory=factory, metadata={"help": help})
  return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The learned optimizer to meta-train: an architecture of ``learned_opt.registry()``."""

  name: str = _f("mlp", help="architecture name in learned_opt.registry()")
  kwargs: dict[str, Any] = _f(help="constructor arguments of the architecture", factory=dict)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """The task family inner trainings are drawn from: a name of ``tasks.family_names()``."""

  family: str = _f("quadratic", help="task family name in tasks.family_names()")
  kwargs: dict[str, Any] = _f(help="fields of the family's dataclass to override", factory=dict)


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
  """The meta-gradient estimator (``meta_train.trainer.make_estimator``)."""

  name: Literal["tbptt", "es", "pes", "full_es"] = _f(
      "pes", help="tbptt | es (antithetic truncated ES) | pes | full_es")
  num_particles: int = _f(8, help="inner trainings per estimate (even for es/pes/full_es)")
  truncation: int = _f(20, help="inner steps per truncated unroll")
  horizon: int = _f(100, help="inner steps of one inner training before its task is reset "
                              "(the longest one if min_horizon is set)")
  min_horizon: int | None = _f(None, help="if set, horizons are log-uniform in "
                                          "[min_horizon, horizon]; else fixed")
  stagger: bool = _f(True, help="start particles at random points of their first inner run")
  sigma: float = _f(0.01, help="std of the meta-parameter perturbation (ES estimators)")
  meta_loss: Literal["train", "valid"] = _f(
      "train", help="mean normalised loss on train batches, or on a held-out valid batch")


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


@dataclasses.dataclass(frozen=True)
class WandbConfig:
  """Weights & Biases logging (offline by default, into the run directory)."""

  mode: Literal["offline", "online", "disabled"] = _f("offline", help="wandb mode")
  project: str = _f("learned_opt", help="wandb project")
  entity: str | None = _f(None, help="wandb entity (team or user)")
  name: str | None = _f(None, help="wandb run name (default: the run directory's name)")


# The one evaluation config, shared with ``meta-eval`` (a jax-free module).
from meta_train.evaluation.config import EvalConfig  # pylint: disable=g-import-not-at-top,wrong-import-position


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
    "eval.smoothing_window", "eval.bootstrap_samples",
})


# ---------------------------------------------------------------------------------------------
# Presets.

PRESETS: dict[str, RunConfig] = {
    # Under a minute on CPU, compile included: a few outer steps on 4-d quadratics.
    "smoke": RunConfig(
        optimizer=OptimizerConfig("mlp", {"hidden_sizes": (8, 8)}),
        task=TaskConfig("quadratic", {"dim": 4}),
        estimator=EstimatorConfig("pes", num_particles=4, truncation=5, horizon=20, sigma=0.01),
        outer=OuterConfig(lr=1e-3),
        run=RunSettings(num_outer_steps=20, checkpoint_every=10, log_every=5, max_to_keep=2),
    ),
    # The README's main job (under 15 minutes on 2 CPU cores, evaluation included): a small
    # learned optimizer meta-trained on MLP classifiers of the bundled 8x8 digits.
    "quickstart": RunConfig(
        optimizer=OptimizerConfig("mlp", {"hidden_sizes": (16, 16)}),
        task=TaskConfig("digits_mlp", {}),
        estimator=EstimatorConfig("pes", num_particles=16, truncation=20, horizon=200,
                                  sigma=0.01),
        outer=OuterConfig(lr=3e-3, clip=1.0),
        run=RunSettings(num_outer_steps=1500, steps_per_dispatch=10, checkpoint_every=250,
                        log_every=50),
        eval=EvalConfig(enabled=True, num_tasks=8, num_seeds=2, num_steps=200),
    ),
    # The recipe of the shipped pretrained optimizer: the mixture of classifier families and
    # quadratics, longer horizons, a cosine outer schedule.
    "default": RunConfig(
        optimizer=OptimizerConfig("mlp", {}),
        task=TaskConfig("mixture", {}),
        estimator=EstimatorConfig("pes", num_particles=16, truncation=20, horizon=500,
                                  min_horizon=100, sigma=0.01),
        outer=OuterConfig(lr=1e-3, clip=1.0, schedule="cosine", warmup_steps=100),
        run=RunSettings(num_outer_steps=5000, steps_per_dispatch=10, checkpoint_every=500,
                        log_every=50),
        eval=EvalConfig(enabled=True),
    ),
}


def preset(name: str) -> RunConfig:
  """The preset ``name``; raises :class:`ConfigError` listing the known ones."""
  if name not in PRESETS:
    raise ConfigError("preset", f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
  return PRESETS[name]


# ---------------------------------------------------------------------------------------------
# Types: parsing command-line strings and checking JSON values against annotations.

_NONE = type(None)


def _hints(cls) -> dict[str, Any]:
  try:
    return typing.get_type_hints(cls)
  except Exception:  # pylint: disable=broad-except
    return {f.name: Any for f in dataclasses.fields(cls)}


def _optional_inner(tp):
  """``X`` if ``tp`` is ``X | None`` / ``Optional[X]``, else None."""
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not _NONE]
    if len(args) == 1 and len(typing.get_args(tp)) == 2:
      return args[0]
  return None


def type_name(tp) -> str:
  """A short readable name of a type annotation (for messages and ``--help``)."""
  if tp is Any:
    return "any"
  inner = _optional_inner(tp)
  if inner is not None:
    return f"{type_name(inner)} | None"
  origin = typing.get_origin(tp)
  if origin is Literal:
    return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
  if origin in (tuple, list):
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
      return f"tuple[{type_name(args[0])}, ...]"
    return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
  if origin is dict:
    return "dict"
  return getattr(tp, "__name__", str(tp))


def _bad(path: str, tp, value) -> ConfigError:
  return ConfigError(path, f"expected {type_name(tp)}, got {value!r}")


def check_value(value: Any, tp, path: str) -> Any:
  """Checks a JSON-like ``value`` against annotation ``tp``; returns it normalised.

  Lists become tuples for tuple annotations and ints become floats for float annotations;
  bools are never accepted as numbers. Raises :class:`ConfigError` naming ``path``.
  """
  if tp is Any or tp is object:
    return _freeze_any(value)
  inner = _optional_inner(tp)
  if inner is not None:
    return None if value is None else check_value(value, inner, path)
  origin = typing.get_origin(tp)
  if origin is Literal:
    if value not in typing.get_args(tp) or isinstance(value, bool) != any(
        isinstance(a, bool) for a in typing.get_args(tp)):
      raise ConfigError(path, f"expected one of {list(typing.get_args(tp))}, got {value!r}")
    return value
  if origin in (typing.Union, types.UnionType):
    for arg in typing.get_args(tp):
      try:
        return check_value(value, arg, path)
      except ConfigError:
        pass
    raise _bad(path, tp, value)
  if origin in (tuple, list) or tp in (tuple, list):
    if not isinstance(value, (list, tuple)):
      raise _bad(path, tp, value)
    args = typing.get_args(tp)
    if not args:
      items = [_freeze_any(v) for v in value]
    elif len(args) == 2 and args[1] is Ellipsis:
      items = [check_value(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    else:
      if len(value) != len(args):
        raise ConfigError(path, f"expected {len(args)} items ({type_name(tp)}), got {value!r}")
      items = [check_value(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
    return tuple(items) if (origin or tp) is tuple else list(items)
  if origin is dict or tp is dict:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
      raise _bad(path, tp, value)
    return {k: _freeze_any(v) for k, v in value.items()}
  if tp is bool:
    if not isinstance(value, bool):
      raise _bad(path, tp, value)
    return value
  if tp is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise _bad(path, tp, value)
    return value
  if tp is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise _bad(path, tp, value)
    return float(value)
  if tp is str:
    if not isinstance(value, str):
      raise _bad(path, tp, value)
    return value
  if isinstance(tp, type):
    if not isinstance(value, tp):
      raise _bad(path, tp, value)
    return value
  return value


def _freeze_any(value):
  """Untyped values: lists become tuples (hashable, like the dataclass configs downstream)."""
  if isinstance(value, list):
    return tuple(_freeze_any(v) for v in value)
  if isinstance(value, dict):
    return {k: _freeze_any(v) for k, v in value.items()}
  return value


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_value(text: str, tp, path: str) -> Any:
  """Parses the command-line string ``text`` into a value of annotation ``tp``.

  ``none``/``null`` for optional fields, ``true``/``false`` for bools, ints, floats, plain
  strings, JSON lists or comma-separated items for tuples, JSON objects for dicts. Fields of
  unknown type take a JSON literal, else the string itself.
  """
  s = text.strip()
  inner = _optional_inner(tp)
  if inner is not None:
    if s.lower() in ("none", "null"):
      return None
    return parse_value(text, inner, path)
  origin = typing.get_origin(tp)
  if tp is Any or tp is object:
    try:
      return _freeze_any(json.loads(s))
    except json.JSONDecodeError:
      return text
  if tp is bool:
    if s.lower() in _TRUE:
      return True
    if s.lower() in _FALSE:
      return False
    raise _bad(path, tp, text)
  if tp is int:
    try:
      return int(s.replace("_", ""))
    except ValueError:
      try:
        f = float(s)
      except ValueError:
        raise _bad(path, tp, text) from None
      if f.is_integer():
        return int(f)
      raise _bad(path, tp, text) from None
  if tp is float:
    try:
      return float(s)
    except ValueError:
      raise _bad(path, tp, text) from None
  if tp is str:
    return text
  if origin is Literal:
    for choice in typing.get_args(tp):
      if str(choice) == s:
        return choice
    raise ConfigError(path, f"expected one of {list(typing.get_args(tp))}, got {text!r}")
  if origin in (tuple, list) or tp in (tuple, list):
    if s.startswith("["):
      try:
        return check_value(json.loads(s), tp, path)
      except json.JSONDecodeError:
        raise _bad(path, tp, text) from None
    args = typing.get_args(tp)
    parts = [p for p in s.strip("()").split(",") if p.strip()] if s not in ("", "()") else []
    if args and args[-1] is Ellipsis:
      items = [parse_value(p, args[0], f"{path}[{i}]") for i, p in enumerate(parts)]
    elif args:
      if len(parts) != len(args):
        raise ConfigError(path, f"expected {len(args)} items ({type_name(tp)}), got {text!r}")
      items = [parse_value(p, a, f"{path}[{i}]") for i, (p, a) in enumerate(zip(parts, args))]
    else:
      items = [parse_value(p, Any, f"{path}[{i}]") for i, p in enumerate(parts)]
    return tuple(items) if (origin or tp) is tuple else list(items)
  if origin in (typing.Union, types.UnionType):
    for arg in typing.get_args(tp):
      try:
        return parse_value(text, arg, path)
      except ConfigError:
        pass
    raise _bad(path, tp, text)
  if origin is dict or tp is dict:
    try:
      return check_value(json.loads(s), tp, path)
    except json.JSONDecodeError:
      raise _bad(path, tp, text) from None
  return parse_value(text, Any, path)


# ---------------------------------------------------------------------------------------------
# Dict / JSON round trip.


def _jsonable(value):
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  return value


def to_dict(cfg: RunConfig) -> dict[str, Any]:
  """The config as nested JSON-compatible dicts (tuples become lists)."""
  return _jsonable(cfg)


def to_json(cfg: RunConfig) -> str:
  """The config as indented JSON (what the run directory's ``config.json`` holds)."""
  return json.dumps(to_dict(cfg), indent=2, sort_keys=False) + "\n"


def _from_dict(cls, data: Any, path: str):
  if not isinstance(data, Mapping):
    raise ConfigError(path, f"expected an object for {cls.__name__}, got {data!r}")
  hints = _hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - set(fields))
  if unknown:
    p = f"{path}.{unknown[0]}" if path else unknown[0]
    raise ConfigError(p, f"unknown field; known fields of {path or 'the config'}: "
                         f"{', '.join(fields)}")
  kwargs = {}
  for name, value in data.items():
    p = f"{path}.{name}" if path else name
    tp = hints[name]
    if dataclasses.is_dataclass(tp):
      kwargs[name] = _from_dict(tp, value, p)
    else:
      kwargs[name] = check_value(value, tp, p)
  return cls(**kwargs)


def from_dict(data: Mapping[str, Any]) -> RunConfig:
  """Builds a :class:`RunConfig` from :func:`to_dict`'s output; missing fields take defaults.

  Raises:
    ConfigError: for an unknown field or a value of the wrong type, naming its path.
  """
  return _from_dict(RunConfig, data, "")


def from_json(text: str) -> RunConfig:
  """Inverse of :func:`to_json`."""
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError("", f"config is not valid JSON: {e}") from None
  return from_dict(data)


# ---------------------------------------------------------------------------------------------
# Field paths and overrides.


def fields_table(cfg: RunConfig | None = None) -> list[tuple[str, str, Any, str]]:
  """``(path, type name, value, help)`` for every leaf field of ``cfg`` (default: defaults)."""
  cfg = RunConfig() if cfg is None else cfg
  rows = []

  def walk(obj, prefix):
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
      value = getattr(obj, f.name)
      path = f"{prefix}{f.name}"
      if dataclasses.is_dataclass(value):
        walk(value, path + ".")
      else:
        rows.append((path, type_name(hints[f.name]), value, f.metadata.get("help", "")))

  walk(cfg, "")
  return rows


def get_field(cfg: RunConfig, path: str) -> Any:
  """The value at dotted ``path`` (``kwargs`` entries included)."""
  obj: Any = cfg
  for part in path.split("."):
    if isinstance(obj, Mapping):
      obj = obj[part]
    else:
      obj = getattr(obj, part)
  return obj


def _kwargs_target(cfg: RunConfig, section: str):
  """The class whose dataclass fields type ``optimizer.kwargs`` / ``task.kwargs``, or None."""
  import dataclasses as dc  # pylint: disable=import-outside-toplevel,reimported
  if section == "optimizer":
    import learned_opt  # pylint: disable=import-outside-toplevel
    cls = learned_opt.registry().get(cfg.optimizer.name)
  else:
    import tasks  # pylint: disable=import-outside-toplevel
    try:
      cls = type(tasks.get(cfg.task.family))
    except (KeyError, ValueError):
      cls = None
  return cls if cls is not None and dc.is_dataclass(cls) else None


def _split_override(item: str) -> tuple[str, str]:
  if "=" not in item:
    raise ConfigError(item, "override must look like field.path=value")
  path, text = item.split("=", 1)
  path = path.strip()
  if path.startswith("--"):
    path = path[2:]
  if not path:
    raise ConfigError(item, "override has an empty field path")
  return path, text


def _set(obj, parts: Sequence[str], value, full: str):
  """Returns ``obj`` (a frozen dataclass) with the field at ``parts`` replaced by ``value``."""
  head, rest = parts[0], parts[1:]
  names = [f.name for f in dataclasses.fields(obj)]
  if head not in names:
    prefix = full[: len(full) - len(".".join(parts))].rstrip(".")
    raise ConfigError(full, f"unknown field; known fields of {prefix or 'the config'}: "
                            f"{', '.join(names)}")
  if not rest:
    return dataclasses.replace(obj, **{head: value})
  return dataclasses.replace(obj, **{head: _set(getattr(obj, head), rest, value, full)})


def apply_overrides(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
  """Applies ``field.path=value`` strings, each parsed against its field's type.

  ``optimizer.kwargs.NAME=value`` / ``task.kwargs.NAME=value`` set one constructor argument,
  typed by the architecture's / family's dataclass field. Changing ``optimizer.name`` (or
  ``task.family``) drops the preset's kwargs of the old one (unless a whole
  ``optimizer.kwargs={...}`` is given); per-entry kwargs overrides then apply.

  Raises:
    ConfigError: unknown field or unparsable value, naming the field path.
  """
  plain, kw = [], []
  for item in overrides:
    path, text = _split_override(item)
    parts = path.split(".")
    (kw if len(parts) >= 3 and parts[1] == "kwargs" else plain).append((path, text))
  old = cfg
  for path, text in plain:
    parts = path.split(".")
    # Walk to the field to find its annotation.
    obj: Any = cfg
    for i, part in enumerate(parts):
      if not dataclasses.is_dataclass(obj):
        raise ConfigError(path, f"{'.'.join(parts[:i])} has no sub-fields")
      names = {f.name for f in dataclasses.fields(obj)}
      if part not in names:
        prefix = ".".join(parts[:i])
        raise ConfigError(path, f"unknown field; known fields of {prefix or 'the config'}: "
                                f"{', '.join(sorted(names))}")
      tp = _hints(type(obj))[part]
      obj = getattr(obj, part)
    if dataclasses.is_dataclass(obj):
      raise ConfigError(path, "is a section; set one of its fields, e.g. "
                              f"{path}.{dataclasses.fields(obj)[0].name}=...")
    cfg = _set(cfg, parts, parse_value(text, tp, path), path)
  explicit = {p.split(".")[0] for p, _ in plain if p.split(".")[1:] == ["kwargs"]}
  if cfg.optimizer.name != old.optimizer.name and "optimizer" not in explicit:
    cfg = dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, kwargs={}))
  if cfg.task.family != old.task.family and "task" not in explicit:
    cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, kwargs={}))
  for path, text in kw:
    section, _, name = path.split(".", 2)
    if section not in ("optimizer", "task"):
      raise ConfigError(path, "unknown field")
    target = _kwargs_target(cfg, section)
    tp: Any = Any
    if target is not None:
      hints = _hints(target)
      if name not in hints or name not in {f.name for f in dataclasses.fields(target)}:
        raise ConfigError(path, f"unknown field of {target.__name__}; known: "
                                f"{', '.join(f.name for f in dataclasses.fields(target))}")
      tp = hints[name]
    sub = getattr(cfg, section)
    kwargs = dict(sub.kwargs)
    kwargs[name] = parse_value(text, tp, path)
    cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(sub, kwargs=kwargs)})
  return cfg


# ---------------------------------------------------------------------------------------------
# Validation.


def _check_kwargs(cfg: RunConfig, section: str) -> dict[str, Any]:
  """Checks ``<section>.kwargs`` against the target dataclass; returns normalised kwargs."""
  sub = getattr(cfg, section)
  target = _kwargs_target(cfg, section)
  if target is None:
    return dict(sub.kwargs)
  hints = _hints(target)
  known = [f.name for f in dataclasses.fields(target) if f.init]
  out = {}
  for name, value in sub.kwargs.items():
    path = f"{section}.kwargs.{name}"
    if name not in known:
      raise ConfigError(path, f"unknown field of {target.__name__}; known: {', '.join(known)}")
    out[name] = check_value(value, hints.get(name, Any), path)
  return out


def _positive(cfg: RunConfig, *paths: str, allow_zero: bool = False) -> None:
  for path in paths:
    v = get_field(cfg, path)
    if v < 0 or (v == 0 and not allow_zero):
      raise ConfigError(path, f"must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")


def validate(cfg: RunConfig) -> RunConfig:
  """Checks every field and every cross-field constraint; returns the normalised config.

  Runs before anything is compiled. Builds (without running) the learned optimizer and the task
  family so their constructors' own checks run too.

  Raises:
    ConfigError: naming the first offending field.
  """
  # Types of every plain field (catches values set programmatically with the wrong type).
  cfg = from_dict(to_dict(cfg))
  import learned_opt  # pylint: disable=import-outside-toplevel
  import tasks  # pylint: disable=import-outside-toplevel

  archs = learned_opt.registry()
  if cfg.optimizer.name not in archs:
    raise ConfigError("optimizer.name", f"unknown architecture {cfg.optimizer.name!r}; "
                                        f"known: {', '.join(sorted(archs))}")
  if cfg.task.family not in tasks.family_names():
    raise ConfigError("task.family", f"unknown task family {cfg.task.family!r}; "
                                     f"known: {', '.join(tasks.family_names())}")
  cfg = dataclasses.replace(
      cfg,
      optimizer=dataclasses.replace(cfg.optimizer, kwargs=_check_kwargs(cfg, "optimizer")),
      task=dataclasses.replace(cfg.task, kwargs=_check_kwargs(cfg, "task")))
  build_optimizer(cfg)
  build_family(cfg)

  est = cfg.estimator
  if est.name not in ESTIMATORS:
    raise ConfigError("estimator.name", f"unknown estimator {est.name!r}; known: "
                                        f"{', '.join(ESTIMATORS)}")
  _positive(cfg, "estimator.num_particles", "estimator.truncation", "estimator.horizon")
  if est.name in ANTITHETIC_ESTIMATORS and est.num_particles % 2:
    raise ConfigError("estimator.num_particles",
                      f"must be even for the antithetic estimator {est.name!r} "
                      f"(pairs of ±σε perturbations), got {est.num_particles}")
  shortest = est.horizon if est.min_horizon is None else est.min_horizon
  if est.min_horizon is not None:
    _positive(cfg, "estimator.min_horizon")
    if est.min_horizon > est.horizon:
      raise ConfigError("estimator.min_horizon", f"min_horizon ({est.min_horizon}) must not "
                                                 f"exceed estimator.horizon ({est.horizon})")
  if est.name == "full_es" and est.min_horizon is not None:
    raise ConfigError("estimator.min_horizon", "full_es unrolls one fixed horizon; leave "
                                               "min_horizon unset")
  if est.truncation > shortest:
    name = "horizon" if est.min_horizon is None else "min_horizon"
    raise ConfigError("estimator.truncation",
                      f"truncation ({est.truncation}) must not exceed estimator.{name} "
                      f"({shortest})")
  _positive(cfg, "eval.num_tasks", "eval.num_seeds", "eval.num_steps")
  if est.name in ANTITHETIC_ESTIMATORS:
    _positive(cfg, "estimator.sigma")

  _positive(cfg, "outer.lr")
  _positive(cfg, "outer.clip", "outer.warmup_steps", allow_zero=True)

  run = cfg.run
  _positive(cfg, "run.num_outer_steps", "run.steps_per_dispatch", "run.checkpoint_every",
            "run.max_to_keep", "run.log_every")
  _positive(cfg, "run.seed", allow_zero=True)
  k = run.steps_per_dispatch
  for name in ("num_outer_steps", "checkpoint_every", "log_every"):
    v = getattr(run, name)
    if v % k:
      raise ConfigError(f"run.{name}", f"must be a multiple of run.steps_per_dispatch ({k}), "
                                       f"got {v}")
  if cfg.outer.warmup_steps >= run.num_outer_steps and cfg.outer.warmup_steps:
    raise ConfigError("outer.warmup_steps", f"must be < run.num_outer_steps "
                                            f"({run.num_outer_steps}), got "
                                            f"{cfg.outer.warmup_steps}")
  return cfg


def build_optimizer(cfg: RunConfig):
  """The learned optimizer object ``learned_opt.registry()[name](**kwargs)``."""
  import learned_opt  # pylint: disable=import-outside-toplevel
  cls = learned_opt.registry()[cfg.optimizer.name]
  try:
    return cls(**cfg.optimizer.kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError("optimizer.kwargs", f"{cls.__name__} rejected {cfg.optimizer.kwargs}: "
                                          f"{e}") from None


def build_family(cfg: RunConfig):
  """The task family ``tasks.get(family)`` with ``task.kwargs`` replacing its fields."""
  import tasks  # pylint: disable=import-outside-toplevel
  family = tasks.get(cfg.task.family)
  if not cfg.task.kwargs:
    return family
  if not dataclasses.is_dataclass(family):
    raise ConfigError("task.kwargs", f"family {cfg.task.family!r} takes no kwargs")
  try:
    return dataclasses.replace(family, **cfg.task.kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError("task.kwargs", f"{type(family).__name__} rejected {cfg.task.kwargs}: "
                                     f"{e}") from None


def resolve(preset_name: str = "default", overrides: Sequence[str] = ()) -> RunConfig:
  """Preset + overrides, validated. The one-call way to build a run's config."""
  return validate(apply_overrides(preset(preset_name), overrides))


def diff(a: RunConfig, b: RunConfig) -> list[tuple[str, Any, Any]]:
  """``(path, a's value, b's value)`` for every leaf field (kwargs entries too) that differs."""
  da, db = _flatten(to_dict(a)), _flatten(to_dict(b))
  keys = sorted(set(da) | set(db))
  missing = "<unset>"
  return [(k, da.get(k, missing), db.get(k, missing)) for k in keys
          if da.get(k, missing) != db.get(k, missing)]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}."))  # an empty dict has no entries
    else:
      out[f"{prefix}{k}"] = v
  return out


def incompatible_fields(saved: RunConfig, new: RunConfig) -> list[tuple[str, Any, Any]]:
  """Differences that forbid resuming ``saved``'s run with ``new`` (trajectory-changing ones).

  ``run.num_outer_steps`` may change only with a constant outer schedule (a cosine schedule
  depends on it).
  """
  allowed = set(RESUMABLE_FIELDS)
  if saved.outer.schedule != "constant" or new.outer.schedule != "constant":
    allowed.discard("run.num_outer_steps")
  return [d for d in diff(saved, new) if d[0] not in allowed]
