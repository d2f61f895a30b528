"""The estimators by name: one registry keyed by each estimator class's own ``name``.

Everything that lists estimators reads :data:`ESTIMATORS`: the run config's
``estimator.name`` choices (and so ``meta-train --help`` and the error for an unknown name),
:func:`make_estimator` and :func:`build_estimator`.

An estimator's settings are its :class:`~meta_train.unroll.UnrollConfig` fields plus its own
fields (:meth:`~meta_train.estimators.estimator.Estimator.own_fields`), under the same names
everywhere: ``make_estimator``'s keywords, the estimator's attributes and the run config's
``estimator.*`` fields. Example::

  est = make_estimator("pes", lopt, family, num_pairs=4, truncation_length=10,
                       min_horizon=50, max_horizon=50)
  est.num_pairs, est.unroll.truncation_length  # 4, 10
"""

from __future__ import annotations

import dataclasses
from typing import Any

from meta_train import unroll as unroll_lib
from meta_train.estimators import estimator as est_lib
from meta_train.estimators.full_es import FullES
from meta_train.estimators.pes import PES
from meta_train.estimators.tbptt import TBPTT
from meta_train.estimators.truncated_es import TruncatedES

ESTIMATORS: dict[str, type[est_lib.Estimator]] = {
    cls.name: cls for cls in (TBPTT, TruncatedES, PES, FullES)}

UNROLL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(unroll_lib.UnrollConfig))


def estimator_class(name: str) -> type[est_lib.Estimator]:
  """The estimator class registered as ``name``.

  Raises:
    ValueError: unknown name, listing the known ones.
  """
  if name not in ESTIMATORS:
    raise ValueError(f"unknown estimator {name!r}; known estimators: {', '.join(ESTIMATORS)}")
  return ESTIMATORS[name]


def estimator_fields(name: str) -> tuple[str, ...]:
  """The settings estimator ``name`` takes: the unroll's fields it reads, then its own."""
  cls = estimator_class(name)
  return tuple(f for f in UNROLL_FIELDS if f not in cls.unused_unroll_fields) + cls.own_fields()


def count_field(name: str) -> str:
  """The field counting estimator ``name``'s inner trainings: ``num_pairs`` or ``num_particles``.

  The antithetic estimators count pairs (two inner trainings each), ``tbptt`` particles.
  """
  return "num_pairs" if "num_pairs" in estimator_fields(name) else "num_particles"


def estimators_with(field: str) -> tuple[str, ...]:
  """The names of the estimators that take setting ``field``, in registry order."""
  return tuple(n for n in ESTIMATORS if field in estimator_fields(n))


def field_default(field: str) -> Any:
  """The default of estimator setting ``field``, read from the class that declares it.

  The unroll's fields are :class:`~meta_train.unroll.UnrollConfig`'s; the others are declared
  once by an estimator class (``num_pairs`` and ``sigma`` by
  :class:`~meta_train.estimators.antithetic.AntitheticEstimator`, ``num_particles`` by
  :class:`~meta_train.estimators.tbptt.TBPTT`) and inherited, so there is one default.

  Raises:
    ValueError: no estimator has ``field``.
  """
  defaults = {f.default for cls in (unroll_lib.UnrollConfig, *ESTIMATORS.values())
              for f in dataclasses.fields(cls)
              if f.name == field and f.default is not dataclasses.MISSING}
  if len(defaults) != 1:
    raise ValueError(f"estimator field {field!r} has {len(defaults)} defaults: {defaults}")
  return defaults.pop()


def make_estimator(name: str, lopt: Any, family: Any, **fields: Any) -> est_lib.Estimator:
  """Builds estimator ``name`` for ``lopt`` and ``family``.

  Args:
    name: a key of :data:`ESTIMATORS`: ``"tbptt"`` (truncated backprop), ``"es"`` (antithetic
      truncated ES), ``"pes"`` (persistent ES) or ``"full_es"`` (antithetic ES over the whole
      horizon).
    lopt: the learned optimizer.
    family: the task family.
    **fields: settings from :func:`estimator_fields`: ``truncation_length``, ``min_horizon``,
      ``max_horizon``, ``meta_loss``, ``stagger`` (see
      :class:`~meta_train.unroll.UnrollConfig`) and the estimator's own (``num_particles`` for
      tbptt; ``num_pairs`` and ``sigma`` for the antithetic ones). Missing ones take the
      classes' defaults.

  Returns:
    The estimator, checked by its constructor.

  Raises:
    ValueError: unknown name or field. meta_train.errors.FieldError: invalid value (a
      ``ValueError`` naming the field).
  """
  cls = estimator_class(name)
  own, takes = cls.own_fields(), estimator_fields(name)
  unknown = sorted(set(fields) - set(takes))
  if unknown:
    raise ValueError(f"estimator {name!r} has no field {unknown[0]!r}; its fields: "
                     f"{', '.join(takes)}")
  unroll = cls.unroll_config(**{k: v for k, v in fields.items() if k in UNROLL_FIELDS})
  return cls(lopt, family, unroll, **{k: v for k, v in fields.items() if k in own})


def build_estimator(spec: Any, lopt: Any, family: Any) -> est_lib.Estimator:
  """:func:`make_estimator` from a spec: an object with ``name`` and every field it uses.

  ``spec`` is typically the run config's ``estimator`` section
  (:class:`meta_train.config.EstimatorConfig`); only the fields estimator ``spec.name`` takes
  are read.
  """
  return make_estimator(spec.name, lopt, family,
                        **{f: getattr(spec, f) for f in estimator_fields(spec.name)})
