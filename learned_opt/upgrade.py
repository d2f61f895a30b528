"""Reading format-v1 files as v2: the one place that knows the v1 config layout.

Format v1 saved ``MLPOptimizer`` as one flat config holding every experiment flag. v2 saves only
what changes the updates, and composes a learned schedule as its own piece
(:class:`learned_opt.Chain`). :func:`upgrade_v1` maps a v1 file's ``(name, config,
meta-parameters)`` to the v2 ones that compute the same updates, bit for bit:

* ``fuse_min_size`` (a speed knob) and ``init_scheme`` / ``init_learning_rate`` /
  ``init_decay`` (how meta-training started) are dropped;
* ``tensor_features`` / ``tensor_grad_feature`` / ``tensor_features_initial`` become the nested
  ``tensor = {"grad": ..., "held": ...}`` (or ``None``);
* ``schedule_hidden_size > 0`` becomes ``chain(mlp, schedule)`` with the ``sched_*`` tensors
  under ``"schedule"``; ``schedule_normalize`` inserts the experimental ``normalize_step``
  (``λ`` = the v1 ``init_learning_rate``) between them, the rule's ``step_mult`` becoming 1;
* ``horizon_aware`` comes from the provenance (:func:`v1_horizon_aware`).

Any other key stays in the rule's config, so an unknown one is still refused, by name, when
the optimizer is rebuilt. Only dicts and arrays are touched here (no JAX), so
:mod:`learned_opt.torch` reads v1 files through the same function.
"""

from __future__ import annotations

from typing import Any

# v1 MLP keys that never changed the updates.
_DROPPED = ("fuse_min_size", "init_scheme", "init_decay")
# Defaults of the v1 MLPOptimizer for the keys mapped here (absent keys took them).
_V1_STEP_NORM_LR = 5e-3
_V1_LOSS_DECAYS = [0.9, 0.99, 0.999]
_V1_TIME_SCALES = [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0,
                   100000.0]
# Architectures whose v2 config has a ``horizon_aware`` field that v1 files lack.
_HORIZON_FIELD = ("mlp", "adafactor_mlp")


def trained_family(provenance: dict[str, Any]) -> str | None:
  """The task family a file was meta-trained on, as its provenance says (``None`` if it does
  not): ``provenance["family"]``, which ``meta-train`` writes, or, in files written before it
  did, the ``task.family`` of the config ``meta-train`` wrote into the provenance (read here,
  with the other layouts of older files, so no other module of ``learned_opt`` reads it)."""
  family = provenance.get("family")
  if family is None:
    config = provenance.get("config")
    task = config.get("task") if isinstance(config, dict) else None
    family = task.get("family") if isinstance(task, dict) else None
  return family if isinstance(family, str) else None


def v1_horizon_aware(provenance: dict[str, Any]) -> bool:
  """Whether a v1 file was meta-trained seeing each run's length as ``num_steps``.

  v1 files did not save it with the optimizer; ``meta-train`` wrote its whole config into the
  provenance, so it is read there once, at upgrade (``config.estimator.horizon_aware``;
  ``False`` when the provenance does not say). v2 files carry it as the optimizer's field.
  """
  config = provenance.get("config") or {}
  estimator = config.get("estimator") if isinstance(config, dict) else None
  return bool((estimator or {}).get("horizon_aware", False))


def upgrade_v1(name: str, config: dict[str, Any], meta_params: Any,
               provenance: dict[str, Any]) -> tuple[str, dict[str, Any], Any]:
  """The v2 ``(name, config, meta_params)`` computing the same updates as a v1 file's.

  Args:
    name: the v1 architecture name.
    config: the v1 config dict.
    meta_params: the v1 meta-parameters (nested dicts of arrays).
    provenance: the v1 file's provenance dict.

  Returns:
    ``(name, config, meta_params)`` for format v2 (new dicts; the arguments are not changed).
  """
  if name not in _HORIZON_FIELD:
    return name, config, meta_params
  aware = v1_horizon_aware(provenance)
  if name != "mlp":
    return name, {**config, "horizon_aware": aware}, meta_params
  rule = {k: v for k, v in config.items() if k not in _DROPPED}

  def pop(key, default, kind):
    """A v1 key of the right type, taken out; one of another type stays (and is refused)."""
    value = rule.get(key, default)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
      rule.pop(key, None)
    return value

  lr = pop("init_learning_rate", _V1_STEP_NORM_LR, (int, float))
  hidden = pop("schedule_hidden_size", 0, int)
  loss_decays = pop("schedule_loss_decays", _V1_LOSS_DECAYS, list)
  normalize = pop("schedule_normalize", False, bool)
  tensor = pop("tensor_features", False, bool)
  grad = pop("tensor_grad_feature", True, bool)
  held = pop("tensor_features_initial", False, bool)
  rule["tensor"] = {"grad": grad, "held": held} if tensor else None
  rule["horizon_aware"] = aware
  if not hidden or not isinstance(hidden, int):
    return "mlp", rule, meta_params
  theta = dict(meta_params)
  sched = {k[len("sched_"):]: theta.pop(k) for k in sorted(theta) if k.startswith("sched_")}
  parts = [{"name": "mlp", "config": rule}]
  meta = {"mlp": theta}
  if normalize:  # the rule's d exp(a μ), normalised per tensor to RMS λ
    rule["step_mult"] = 1.0
    parts.append({"name": "normalize_step",
                  "config": {"learning_rate": lr, "horizon_aware": aware}})
    meta["normalize_step"] = {}
  parts.append({"name": "schedule",
                "config": {"hidden_size": hidden,
                           "time_scales": rule.get("time_scales", _V1_TIME_SCALES),
                           "loss_decays": loss_decays, "horizon_aware": aware}})
  meta["schedule"] = sched
  return "chain", {"parts": parts}, meta
