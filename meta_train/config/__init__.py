"""Typed configuration of a meta-training run: schema and presets, generic parsing, validation.

A run is described by one :class:`RunConfig`, a tree of frozen dataclasses
(:mod:`~meta_train.config.schema`). It is built from a named preset (:data:`PRESETS`) plus
``field.path=value`` overrides parsed against each field's type
(:mod:`~meta_train.config.parsing`, domain-free), and validated as a whole *before* anything is
compiled (:mod:`~meta_train.config.validation`): an unknown field, a value of the wrong type or
an impossible combination raises :class:`ConfigError` naming the field. ``to_json`` /
``from_json`` round-trip exactly.

Example::

  cfg = resolve("smoke", ["estimator.num_pairs=4", "run.num_outer_steps=20"])
  cfg.estimator.num_pairs  # 4
  assert from_json(to_json(cfg)) == cfg
"""

from meta_train.config.parsing import ConfigError, diff, get_field, type_name
from meta_train.config.schema import (PRESETS, RESUMABLE_FIELDS, EstimatorConfig, EstimatorName,
                                      EvalConfig, OptimizerConfig, OuterConfig, RunConfig,
                                      RunSettings, StartConfig, TaskConfig, WandbConfig,
                                      fields_table, from_dict, from_json, incompatible_fields,
                                      preset, to_dict, to_json)
from meta_train.config.validation import (Built, apply_overrides, build, build_estimator,
                                          build_family, build_optimizer, build_start,
                                          check_devices, check_estimator_fields, resolve,
                                          validate)

__all__ = [
    "PRESETS", "RESUMABLE_FIELDS", "Built", "ConfigError", "EstimatorConfig", "EstimatorName",
    "EvalConfig", "OptimizerConfig", "OuterConfig", "RunConfig", "RunSettings", "StartConfig",
    "TaskConfig", "WandbConfig", "apply_overrides", "build", "build_estimator", "build_family",
    "build_optimizer", "build_start", "check_devices", "check_estimator_fields", "diff",
    "fields_table",
    "from_dict", "from_json", "get_field", "incompatible_fields", "preset", "resolve",
    "to_dict", "to_json", "type_name", "validate",
]
