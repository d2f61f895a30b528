"""Checking a run config and building what it describes; ``field.path=value`` overrides.

:func:`validate` checks a :class:`~meta_train.config.schema.RunConfig` as a whole before
anything is compiled; each check lives in one place:

* types of every field: :func:`meta_train.config.parsing.from_dict` on the config's dict;
* ``optimizer.kwargs`` / ``task.kwargs``: against the architecture's / family's dataclass
  fields, then by building the learned optimizer and the task family;
* the estimator section: a field the chosen estimator does not take must keep its default
  (:func:`check_estimator_fields`); then by building the estimator (:func:`build_estimator`):
  the estimator and its ``UnrollConfig`` check their own fields and the error is re-raised
  naming ``estimator.<field>``;
* the outer optimizer, run cadences and evaluation sizes: here;
* ``run.num_devices``: that the estimator's pairs (or particles) split over the devices
  (:func:`check_devices`, also called by the run with the mesh's real size).

:func:`build` validates a config and builds the learned optimizer, the task family and the
estimator once (:class:`Built`); a run uses those objects, so nothing is built twice.
:func:`apply_overrides` applies ``field.path=value`` strings (entries of ``optimizer.kwargs`` /
``task.kwargs`` typed by the target class), and :func:`resolve` is preset + overrides +
validation.

Example::

  cfg = resolve("smoke", ["estimator.num_pairs=4", "run.num_outer_steps=20"])
  cfg.estimator.num_pairs  # 4
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple, Sequence

from meta_train import errors
from meta_train.config import parsing
from meta_train.config import schema
from meta_train.config.parsing import ConfigError
from meta_train.config.schema import RunConfig
from meta_train.estimators import grouped
from meta_train.estimators import registry
from meta_train.runtime import sharding as sharding_lib

_KWARGS_SECTIONS = ("optimizer", "task")


def kwargs_target(cfg: RunConfig, section: str):
  """The dataclass whose fields type ``<section>.kwargs`` (``optimizer`` or ``task``), or None."""
  if section == "optimizer":
    import learned_opt  # pylint: disable=import-outside-toplevel
    cls = learned_opt.registry().get(cfg.optimizer.name)
  else:
    import tasks  # pylint: disable=import-outside-toplevel
    try:
      cls = type(tasks.get(cfg.task.family))
    except (KeyError, ValueError):
      cls = None
  return cls if cls is not None and dataclasses.is_dataclass(cls) else None


def _kwargs_entry_type(cfg: RunConfig, dict_path: str, name: str):
  """The annotation of entry ``name`` of ``<section>.kwargs`` (for :func:`parsing.set_field`)."""
  target = kwargs_target(cfg, dict_path.split(".")[0])
  if target is None:
    return Any
  known = [f.name for f in dataclasses.fields(target) if f.init]
  if name not in known:
    raise ConfigError(f"{dict_path}.{name}", f"unknown field of {target.__name__}; known: "
                                             f"{', '.join(known)}")
  if getattr(target, "name", None) == "chain" and name == "parts":
    # A chain's parts are given as their configs: [{"name": ..., "config": {...}}, ...].
    return tuple[dict[str, Any], ...]
  hint = parsing.hints(target).get(name, Any)
  inner = parsing.optional_inner(hint)
  if dataclasses.is_dataclass(inner if inner is not None else hint):
    # A nested frozen config (e.g. MLPOptimizer's tensor): given as its JSON object.
    return dict[str, Any] | None if inner is not None else dict[str, Any]
  return hint


def apply_overrides(cfg: RunConfig, overrides: Sequence[str]) -> RunConfig:
  """Applies ``field.path=value`` strings, each parsed against its field's type.

  ``optimizer.kwargs.NAME=value`` / ``task.kwargs.NAME=value`` set one constructor argument,
  typed by the architecture's / family's dataclass field. Changing ``optimizer.name`` (or
  ``task.family``) drops the preset's kwargs of the old one (unless a whole
  ``optimizer.kwargs={...}`` is given); per-entry kwargs overrides then apply. Likewise
  changing ``optimizer.start.scheme`` to ``lecun`` puts the preset's start settings back to
  their defaults, changing ``estimator.name`` puts the old estimator's own settings back to
  their defaults, and giving ``estimator.member_pairs`` the count it replaces (unless given
  too, and then refused by :func:`check_estimator_fields`).

  Raises:
    ConfigError: unknown field or unparsable value, naming the field path.
  """
  plain, entries = [], []
  for item in overrides:
    path, text = parsing.split_override(item)
    parts = path.split(".")
    (entries if len(parts) >= 3 and parts[1] == "kwargs" else plain).append((path, text))
  old = cfg
  for path, text in plain:
    cfg = parsing.set_field(cfg, path, text)
  whole = {path.split(".")[0] for path, _ in plain if path.split(".")[1:] == ["kwargs"]}
  for section, name in (("optimizer", "name"), ("task", "family")):
    sub = getattr(cfg, section)
    if getattr(sub, name) != getattr(getattr(old, section), name) and section not in whole:
      cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(sub, kwargs={})})
  for path, text in entries:
    cfg = parsing.set_field(cfg, path, text, entry_type=_kwargs_entry_type)
  cfg = _start_of_its_scheme(cfg, old, {path for path, _ in plain})
  given = {path.split(".", 1)[1] for path, _ in plain if path.startswith("estimator.")}
  return dataclasses.replace(cfg, estimator=_drop_ignored_fields(cfg.estimator, old.estimator,
                                                                 given))


def _start_of_its_scheme(cfg: RunConfig, before: RunConfig, given: set[str]) -> RunConfig:
  """``cfg`` with the preset's start settings that the new scheme does not read
  (``schema.START_FIELDS``) back at their defaults when an override switched
  ``optimizer.start.scheme`` (e.g. to ``lecun``, which reads none of them); settings given on
  the command line stay, to be refused by :func:`build_start`."""
  start = cfg.optimizer.start
  if start.scheme == before.optimizer.start.scheme or "optimizer.start" in given:
    return cfg
  default = schema.StartConfig()
  reset = {f.name: getattr(default, f.name) for f in dataclasses.fields(default)
           if f.name != "scheme" and f.name not in schema.START_FIELDS[start.scheme]
           and f"optimizer.start.{f.name}" not in given}
  return dataclasses.replace(cfg, optimizer=dataclasses.replace(
      cfg.optimizer, start=dataclasses.replace(start, **reset)))


def _foreign_fields(spec: schema.EstimatorConfig) -> list[str]:
  """The estimator-setting fields of ``spec`` that estimator ``spec.name`` does not take."""
  takes = set(registry.estimator_fields(spec.name))
  every = {f for name in registry.ESTIMATORS for f in registry.estimator_fields(name)}
  return [f.name for f in dataclasses.fields(spec) if f.name in every - takes]


def _drop_ignored_fields(spec: schema.EstimatorConfig, before: schema.EstimatorConfig,
                         given: set[str]) -> schema.EstimatorConfig:
  """``spec`` with the preset's settings its overrides made ignored back at their defaults.

  Changing ``estimator.name`` drops the old estimator's own settings (as changing
  ``optimizer.name`` drops its kwargs), and giving ``estimator.member_pairs`` drops the count
  it replaces; fields in ``given`` (set on the command line) stay, to be refused.
  """
  drop = set(_foreign_fields(spec)) if spec.name != before.name else set()
  if spec.member_pairs is not None and before.member_pairs is None:
    drop.add(registry.count_field(spec.name))
  return dataclasses.replace(spec, **{f: registry.field_default(f) for f in drop - given})


def check_estimator_fields(spec: schema.EstimatorConfig) -> None:
  """Refuses a setting the chosen estimator would ignore.

  A field of the estimator section that estimator ``spec.name`` does not take (``num_pairs``
  or ``sigma`` for tbptt, ``num_particles`` for the antithetic ones) must keep its default, and
  with ``member_pairs`` given the count field (``num_pairs`` / ``num_particles``) must too: each
  group's count is read from ``member_pairs``.

  Raises:
    ConfigError: naming the ignored field and the one that applies.
  """
  count = registry.count_field(spec.name)
  for field in _foreign_fields(spec):
    if getattr(spec, field) == registry.field_default(field):
      continue
    if field in ("num_pairs", "num_particles"):
      hint = f"its count of inner trainings is estimator.{count}"
    elif field == "final_batches":
      hint = "a truncated unroll has no final loss; full_es recomputes it"
    elif field in registry.UNROLL_FIELDS:
      hint = ("it unrolls each inner training whole, from its first step, over "
              "estimator.max_horizon")
    else:
      hint = ("it takes " + ", ".join(f"estimator.{f}" for f in registry.estimator_fields(spec.name)
                                      if f not in registry.UNROLL_FIELDS)
              + " besides the unroll's fields")
    raise ConfigError(f"estimator.{field}", f"does not apply to estimator {spec.name!r}, which "
                                            f"would ignore it ({hint}); remove it")
  if (spec.group_by_member and spec.member_pairs is not None
      and getattr(spec, count) != registry.field_default(count)):
    raise ConfigError(f"estimator.{count}", f"is ignored when estimator.member_pairs is given "
                                            f"(each group's count is there); remove it or set "
                                            f"estimator.member_pairs=none")


def _check_kwargs(cfg: RunConfig, section: str) -> dict[str, Any]:
  """Checks ``<section>.kwargs`` against the target dataclass; returns normalised kwargs."""
  kwargs = getattr(cfg, section).kwargs
  if kwargs_target(cfg, section) is None:
    return dict(kwargs)
  return {name: parsing.convert(value, _kwargs_entry_type(cfg, f"{section}.kwargs", name),
                                f"{section}.kwargs.{name}")
          for name, value in kwargs.items()}


def _positive(cfg: RunConfig, *paths: str, allow_zero: bool = False) -> None:
  for path in paths:
    v = parsing.get_field(cfg, path)
    if v < 0 or (v == 0 and not allow_zero):
      raise ConfigError(path, f"must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")


class Built(NamedTuple):
  """A validated config and the objects it describes (:func:`build`), each built once."""

  cfg: RunConfig
  lopt: Any  # the learned optimizer
  family: Any  # the task family
  estimator: Any  # the meta-gradient estimator, for lopt and family
  start: Any  # key -> the initial meta-parameters (optimizer.start)


def validate(cfg: RunConfig) -> RunConfig:
  """Checks every field and every cross-field constraint; returns the normalised config.

  Runs before anything is compiled (:func:`build`, keeping only the config).

  Raises:
    ConfigError: naming the first offending field.
  """
  return build(cfg).cfg


def build(cfg: RunConfig) -> Built:
  """Validates ``cfg`` and builds its learned optimizer, task family and estimator, once each.

  Runs before anything is compiled; the constructors' own checks are part of the validation.

  Returns:
    The normalised config with the three objects (nothing is built again by a run given them).

  Raises:
    ConfigError: naming the first offending field.
  """
  # Types of every plain field (catches values set programmatically with the wrong type).
  cfg = schema.from_dict(schema.to_dict(cfg))
  import learned_opt  # pylint: disable=import-outside-toplevel
  import tasks  # pylint: disable=import-outside-toplevel

  archs = learned_opt.registry()
  if cfg.optimizer.name not in archs:
    raise ConfigError("optimizer.name", f"unknown architecture {cfg.optimizer.name!r}; "
                                        f"known: {', '.join(sorted(archs))}")
  if tasks.is_import_path(cfg.task.family):
    get_family(cfg.task.family)  # its own error first (the kwargs' checks would hide it)
  elif cfg.task.family not in tasks.family_names():
    raise ConfigError("task.family", f"unknown task family {cfg.task.family!r}; "
                                     f"known: {', '.join(tasks.family_names())}, or an import "
                                     f"path package.module:function")
  cfg = dataclasses.replace(
      cfg,
      optimizer=dataclasses.replace(cfg.optimizer, kwargs=_check_kwargs(cfg, "optimizer")),
      task=dataclasses.replace(cfg.task, kwargs=_check_kwargs(cfg, "task")))
  lopt, family = build_optimizer(cfg), build_family(cfg)
  start = build_start(cfg, lopt)
  lopt, start = build_frozen(cfg, lopt, start)
  estimator = build_estimator(cfg, lopt, family)

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
  # --- sharding hook (meta_train/runtime/sharding.py) ---
  if run.num_devices is not None:
    _positive(cfg, "run.num_devices")
    check_devices(cfg, run.num_devices)
  # --- end sharding hook ---
  if cfg.outer.warmup_steps >= run.num_outer_steps and cfg.outer.warmup_steps:
    raise ConfigError("outer.warmup_steps", f"must be < run.num_outer_steps "
                                            f"({run.num_outer_steps}), got "
                                            f"{cfg.outer.warmup_steps}")
  _positive(cfg, "eval.num_tasks", "eval.num_seeds", "eval.num_steps")
  return Built(cfg, lopt, family, estimator, start)


def check_devices(cfg: RunConfig, num_devices: int) -> None:
  """Raises :class:`ConfigError` unless the estimator's sharded unit splits over the devices.

  The unit sharded over devices (:func:`meta_train.runtime.sharding.sharding_unit`) is the
  antithetic pair for the estimators with ``num_pairs`` (``es``, ``pes``, ``full_es``: both
  members of a pair stay on one device) and the particle for those with ``num_particles``
  (``tbptt``).

  Raises:
    ConfigError: naming ``estimator.num_pairs`` or ``estimator.num_particles``.
  """
  field = registry.count_field(cfg.estimator.name)
  unit_name = "pairs" if field == "num_pairs" else "particles"
  if cfg.estimator.group_by_member and cfg.estimator.member_pairs is not None:
    for units in cfg.estimator.member_pairs:
      message = sharding_lib.divisibility_error(units, num_devices, unit_name)
      if message:
        raise ConfigError("estimator.member_pairs", f"a group's {message}")
    return
  units = getattr(cfg.estimator, field)
  message = sharding_lib.divisibility_error(units, num_devices, unit_name)
  if message:
    raise ConfigError(f"estimator.{field}", message)


def build_optimizer(cfg: RunConfig):
  """The learned optimizer ``learned_opt.registry()[name](**kwargs)``.

  An architecture with a ``horizon_aware`` field gets ``estimator.horizon_aware`` there (it is
  saved with the optimizer, so a file says whether to give it ``num_steps``); setting it in
  ``optimizer.kwargs`` is refused. A chain is given as ``name="chain"`` and ``kwargs={"parts":
  [{"name": ..., "config": {...}}, ...]}`` (:meth:`learned_opt.Chain.config`); each part with
  a ``horizon_aware`` field gets it the same way.
  """
  import learned_opt  # pylint: disable=import-outside-toplevel
  cls = learned_opt.registry()[cfg.optimizer.name]
  kwargs = dict(cfg.optimizer.kwargs)

  def with_horizon(part_cls, part_kwargs, where):
    part_kwargs = dict(part_kwargs)
    if "horizon_aware" in part_kwargs:
      raise ConfigError(f"{where}.horizon_aware", "is set from estimator.horizon_aware; set "
                                                  "that instead")
    if dataclasses.is_dataclass(part_cls) and "horizon_aware" in {
        f.name for f in dataclasses.fields(part_cls)}:
      part_kwargs["horizon_aware"] = cfg.estimator.horizon_aware
    return part_kwargs

  try:
    if cls is learned_opt.Chain:
      parts = kwargs.get("parts")
      if set(kwargs) != {"parts"} or not isinstance(parts, (list, tuple)):
        raise ConfigError("optimizer.kwargs", "a chain takes exactly {'parts': [{'name': ..., "
                                              "'config': {...}}, ...]}, got "
                                              f"{cfg.optimizer.kwargs}")
      known = learned_opt.registry()
      built = []
      for i, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("name") not in known:
          raise ConfigError(f"optimizer.kwargs.parts[{i}]", f"must be {{'name': <one of "
                                                            f"{sorted(known)}>, 'config': "
                                                            f"{{...}}}}, got {part!r}")
        config = with_horizon(known[part["name"]], part.get("config", {}),
                              f"optimizer.kwargs.parts[{i}].config")
        built.append({"name": part["name"], "config": config})
      return cls.from_config({"parts": built})
    return cls(**with_horizon(cls, kwargs, "optimizer.kwargs"))
  except ConfigError:
    raise
  except (TypeError, ValueError) as e:
    raise ConfigError("optimizer.kwargs", f"{cls.__name__} rejected {cfg.optimizer.kwargs}: "
                                          f"{e}") from None


def build_start(cfg: RunConfig, lopt):
  """``key -> meta_params`` for ``optimizer.start``: ``lopt.init``, ``inits.adam_like`` or an
  optimizer file's parts (:func:`meta_train.recipe.frozen.from_file`, read here once).

  Raises:
    ConfigError: naming ``optimizer.start.<field>`` for a setting the scheme does not use, or
      one the start rejects (checked here by building it on shapes only).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import learned_opt  # pylint: disable=import-outside-toplevel
  start = cfg.optimizer.start
  default = schema.StartConfig()
  for name in (f.name for f in dataclasses.fields(default) if f.name != "scheme"):
    if name in schema.START_FIELDS[start.scheme] or getattr(start, name) == getattr(default, name):
      continue
    if start.scheme == "tuned_adam_like" and name == "learning_rate":
      raise ConfigError("optimizer.start.learning_rate", "is the family's tuned Adam rate with "
                                                         "scheme=tuned_adam_like; remove it or "
                                                         "set scheme=adam_like")
    users = [s for s, fields in schema.START_FIELDS.items() if name in fields]
    raise ConfigError(f"optimizer.start.{name}", f"only applies with optimizer.start.scheme="
                                                 f"{' or '.join(users)}; remove it or set the "
                                                 f"scheme")
  if start.scheme == "lecun":
    return lopt.init
  if start.scheme == "file":
    if not start.path:
      raise ConfigError("optimizer.start.path", "scheme=file needs the optimizer file to start "
                                                "from (a path, or pretrained:NAME)")
    from meta_train.recipe import frozen as frozen_lib  # pylint: disable=import-outside-toplevel
    try:
      return frozen_lib.from_file(lopt, start.path)
    except ValueError as e:
      raise ConfigError("optimizer.start.path", str(e)) from None
  fn = functools.partial(learned_opt.inits.adam_like, lopt, learning_rate=start.learning_rate,
                         decay=start.decay)
  try:
    jax.eval_shape(fn, jax.random.key(0))
  except ValueError as e:
    field = "learning_rate" if "learning_rate" in str(e) else (
        "decay" if str(e).startswith("decay") else "scheme")
    raise ConfigError(f"optimizer.start.{field}", str(e)) from None
  return fn


def build_frozen(cfg: RunConfig, lopt, start):
  """``(lopt, start)`` with ``optimizer.frozen``'s parts fixed at the start file's values
  (:func:`meta_train.recipe.frozen.freeze`); unchanged when nothing is frozen.

  Raises:
    ConfigError: naming ``optimizer.frozen`` (not a chain, a name that is not a part or that
      the file does not hold, every part frozen, a start that is not a file).
  """
  names = cfg.optimizer.frozen
  if not names:
    return lopt, start
  if cfg.optimizer.name != "chain":
    raise ConfigError("optimizer.frozen", f"freezes parts of a chain; optimizer.name is "
                                          f"{cfg.optimizer.name!r}")
  if len(set(names)) != len(names):
    raise ConfigError("optimizer.frozen", f"names a part twice: {list(names)}")
  if cfg.optimizer.start.scheme != "file":
    raise ConfigError("optimizer.frozen", "keeps parts at an optimizer file's values: set "
                                          "optimizer.start.scheme=file and optimizer.start.path")
  from meta_train.recipe import frozen as frozen_lib  # pylint: disable=import-outside-toplevel
  try:
    return frozen_lib.freeze(lopt, cfg.optimizer.start.path, names)
  except ValueError as e:
    raise ConfigError("optimizer.frozen", str(e)) from None


def build_estimator(cfg: RunConfig, lopt, family):
  """The estimator ``cfg.estimator`` describes, for ``lopt`` and ``family``.

  Raises:
    ConfigError: naming ``estimator.<field>`` when the estimator's constructor rejects a field.
  """
  spec = cfg.estimator
  check_estimator_fields(spec)
  if spec.member_pairs is not None and not spec.group_by_member:
    raise ConfigError("estimator.member_pairs", "is only used with estimator.group_by_member="
                                                "true; remove it or set group_by_member")
  if spec.group_clip and not spec.group_by_member:
    raise ConfigError("estimator.group_clip", "is only used with estimator.group_by_member="
                                              "true; remove it or set group_by_member")
  if spec.member_overrides and not spec.group_by_member:
    raise ConfigError("estimator.member_overrides", "is only used with estimator."
                                                    "group_by_member=true; remove it or set "
                                                    "group_by_member")
  try:
    if spec.group_by_member:
      fields = {f: getattr(spec, f) for f in registry.estimator_fields(spec.name)}
      return grouped.grouped_estimator(spec.name, lopt, family, spec.member_pairs,
                                       spec.group_clip, _typed_overrides(spec), **fields)
    return registry.build_estimator(spec, lopt, family)
  except errors.FieldError as e:
    path = {"family": "task.family", "weights": "task.kwargs"}.get(
        e.field, f"estimator.{e.field if hasattr(spec, e.field) else 'group_by_member'}")
    raise ConfigError(path, e.message) from None


def _typed_overrides(spec: schema.EstimatorConfig) -> dict[str, dict[str, Any]]:
  """``estimator.member_overrides`` with each value converted to its ``estimator.<field>``
  type (JSON gives ``3`` for ``3.0``); names and fields are checked by the grouped estimator."""
  types = parsing.hints(schema.EstimatorConfig)
  out = {}
  for member, own in spec.member_overrides.items():
    if not isinstance(own, Mapping):
      out[member] = own  # refused, with its member's name, by grouped_estimator
      continue
    out[member] = {f: parsing.convert(v, types[f], f"estimator.member_overrides.{member}.{f}")
                   if f in types else v for f, v in own.items()}
  return out


def get_family(name: str):
  """``tasks.get(name)``, its failure (an import path that gives no family) a ConfigError."""
  import tasks  # pylint: disable=import-outside-toplevel
  try:
    return tasks.get(name)
  except tasks.UnknownFamilyError as e:
    raise ConfigError("task.family", str(e)) from None


def build_family(cfg: RunConfig):
  """The task family ``tasks.get(family)`` (a registered name or an import path
  ``package.module:function``) with ``task.kwargs`` replacing its fields."""
  family = get_family(cfg.task.family)
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
  return validate(apply_overrides(schema.preset(preset_name), overrides))
