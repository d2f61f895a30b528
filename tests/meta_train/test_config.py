"""Typed run configuration: presets, overrides, validation before compilation, JSON round trip."""

import dataclasses
import json

import pytest

import learned_opt
from meta_train import config as C


def _tiny(*extra):
  return ["optimizer.name=sgd_momentum", *extra]


@pytest.mark.parametrize("name", sorted(C.PRESETS))
def test_presets_validate_and_round_trip(name):
  cfg = C.resolve(name)
  assert cfg.optimizer.name in learned_opt.registry()
  assert C.from_json(C.to_json(cfg)) == cfg
  assert C.from_dict(json.loads(C.to_json(cfg))) == cfg
  assert C.validate(cfg) == cfg


def test_smoke_preset_is_small():
  cfg = C.resolve("smoke")
  assert cfg.run.num_outer_steps <= 50
  assert cfg.estimator.num_particles * cfg.estimator.truncation <= 64


def test_overrides_are_parsed_against_field_types():
  cfg = C.resolve("smoke", _tiny(
      "estimator.num_particles=6", "estimator.sigma=3e-3", "estimator.stagger=false",
      "estimator.min_horizon=10", "estimator.horizon=40", "outer.schedule=cosine",
      "wandb.entity=me", "wandb.name=none", "run.num_outer_steps=1_000",
      "optimizer.kwargs.initial_learning_rate=0.1", "optimizer.kwargs.learn_momentum=yes",
      "task.kwargs.init_scale=0.5,1.5", "task.kwargs.noise_scale=[0, 0]"))
  assert cfg.estimator.num_particles == 6 and isinstance(cfg.estimator.num_particles, int)
  assert cfg.estimator.sigma == 3e-3
  assert cfg.estimator.stagger is False
  assert cfg.estimator.min_horizon == 10
  assert cfg.outer.schedule == "cosine"
  assert cfg.wandb.entity == "me" and cfg.wandb.name is None
  assert cfg.run.num_outer_steps == 1000
  assert cfg.optimizer.kwargs == {"initial_learning_rate": 0.1, "learn_momentum": True}
  assert cfg.task.kwargs == {"dim": 4, "init_scale": (0.5, 1.5), "noise_scale": (0.0, 0.0)}
  assert C.from_json(C.to_json(cfg)) == cfg
  assert C.build_family(cfg).init_scale == (0.5, 1.5)
  assert C.build_optimizer(cfg) == learned_opt.SGDMomentum(initial_learning_rate=0.1,
                                                          learn_momentum=True)


def test_changing_the_architecture_drops_the_preset_kwargs():
  base = C.preset("smoke")
  assert base.optimizer.kwargs  # the smoke preset sets architecture kwargs
  assert C.apply_overrides(base, ["optimizer.name=adam"]).optimizer.kwargs == {}
  cfg = C.apply_overrides(base, ["optimizer.name=adam", "optimizer.kwargs.b1=0.5"])
  assert cfg.optimizer.kwargs == {"b1": 0.5}


@pytest.mark.parametrize("override, field, words", [
    ("estimator.num_particle=4", "estimator.num_particle", "unknown field"),
    ("estimatr.name=pes", "estimatr.name", "unknown field"),
    ("estimator.num_particles=four", "estimator.num_particles", "expected int"),
    ("run.seed=1.5", "run.seed", "expected int"),
    ("outer.lr=fast", "outer.lr", "expected float"),
    ("estimator.stagger=maybe", "estimator.stagger", "expected bool"),
    ("estimator.name=sgd", "estimator.name", "expected one of"),
    ("estimator.num_particles=3", "estimator.num_particles", "even"),
    ("estimator.truncation=50", "estimator.truncation", "must not exceed estimator.horizon"),
    ("estimator.min_horizon=30", "estimator.min_horizon", "must not exceed"),
    ("estimator.sigma=0", "estimator.sigma", "> 0"),
    ("outer.lr=-1", "outer.lr", "> 0"),
    ("run.log_every=3", "run.log_every", "multiple of run.steps_per_dispatch"),
    ("run.num_outer_steps=0", "run.num_outer_steps", "> 0"),
    ("optimizer.name=nope", "optimizer.name", "known: "),
    ("optimizer.kwargs.hidden=3", "optimizer.kwargs.hidden", "unknown field of SGDMomentum"),
    ("optimizer.kwargs.initial_momentum=high", "optimizer.kwargs.initial_momentum",
     "expected float"),
    ("task.family=nope", "task.family", "known: "),
    ("task.kwargs.dimension=3", "task.kwargs.dimension", "unknown field of QuadraticFamily"),
    ("task.kwargs.dim=0", "task.kwargs", "positive"),
    ("task.kwargs.init_scale=1", "task.kwargs.init_scale", "expected 2 items"),
    ("estimator=pes", "estimator", "is a section"),
    ("estimator.num_particles", "estimator.num_particles", "field.path=value"),
])
def test_invalid_overrides_name_the_field(override, field, words):
  extra = ["run.steps_per_dispatch=2"] if field == "run.log_every" else []
  with pytest.raises(C.ConfigError) as e:
    C.resolve("smoke", _tiny(*extra, override))
  assert str(e.value).startswith(field + ":") or e.value.path == field, str(e.value)
  assert words in str(e.value)


def test_tbptt_accepts_odd_particle_counts_and_full_es_needs_fixed_horizon():
  cfg = C.resolve("smoke", _tiny("estimator.name=tbptt", "estimator.num_particles=3"))
  assert cfg.estimator.num_particles == 3
  with pytest.raises(C.ConfigError, match="^estimator.min_horizon:"):
    C.resolve("smoke", _tiny("estimator.name=full_es", "estimator.min_horizon=10"))


def test_from_dict_rejects_unknown_and_mistyped_fields():
  data = C.to_dict(C.resolve("smoke"))
  data["run"]["sed"] = 1
  with pytest.raises(C.ConfigError, match=r"^run\.sed: unknown field"):
    C.from_dict(data)
  data = C.to_dict(C.resolve("smoke"))
  data["estimator"]["num_particles"] = True  # a bool is not an int
  with pytest.raises(C.ConfigError, match=r"^estimator\.num_particles: expected int"):
    C.from_dict(data)
  data = C.to_dict(C.resolve("smoke"))
  data["estimator"]["sigma"] = 1  # ints are fine for floats and become floats
  cfg = C.from_dict(data)
  assert isinstance(cfg.estimator.sigma, float)
  with pytest.raises(C.ConfigError, match="not valid JSON"):
    C.from_json("{")


def test_validate_catches_programmatic_type_errors():
  cfg = C.resolve("smoke")
  bad = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed="0"))
  with pytest.raises(C.ConfigError, match=r"^run\.seed: expected int"):
    C.validate(bad)


def test_unknown_preset_lists_known_ones():
  with pytest.raises(C.ConfigError, match="known presets: smoke, quickstart, default"):
    C.preset("fast")


def test_incompatible_fields_for_resume():
  a = C.resolve("smoke", _tiny())
  same = C.apply_overrides(a, ["run.num_outer_steps=40", "run.log_every=10", "wandb.mode=online",
                               "eval.enabled=true"])
  assert C.incompatible_fields(a, same) == []
  b = C.apply_overrides(a, ["estimator.sigma=0.5", "run.seed=3"])
  assert C.incompatible_fields(a, b) == [("estimator.sigma", 0.01, 0.5), ("run.seed", 0, 3)]
  cos = C.apply_overrides(a, ["outer.schedule=cosine"])
  longer = C.apply_overrides(cos, ["run.num_outer_steps=40"])
  assert C.incompatible_fields(cos, longer) == [("run.num_outer_steps", 20, 40)]
  kw = C.apply_overrides(a, ["optimizer.kwargs.initial_learning_rate=0.5"])
  assert C.incompatible_fields(a, kw) == [
      ("optimizer.kwargs.initial_learning_rate", "<unset>", 0.5)]


def test_fields_table_covers_every_leaf_field():
  rows = C.fields_table()
  paths = [r[0] for r in rows]
  assert "estimator.num_particles" in paths and "run.checkpoint_every" in paths
  assert "optimizer.kwargs" in paths and "eval.enabled" in paths
  n_leaves = sum(len(dataclasses.fields(getattr(C.RunConfig(), f.name)))
                 for f in dataclasses.fields(C.RunConfig))
  assert len(rows) == n_leaves
  assert all(help_text for _, _, _, help_text in rows)


def test_shipped_pretrained_optimizer_was_made_by_the_default_preset():
  """learned_opt/pretrained/default.safetensors must be reproducible with `--preset default`."""
  info = learned_opt.provenance(learned_opt.pretrained_path("default"))
  shipped = dict(info["config"])
  preset = C.to_dict(C.resolve("default"))
  for section in ("wandb", "eval"):  # logging and reporting do not change the optimizer
    shipped.pop(section), preset.pop(section)
  # Added after the optimizer shipped; the device count does not change the trajectory.
  shipped["run"] = {"num_devices": None, **shipped["run"]}
  assert shipped == preset
  assert info["outer_step"] == preset["run"]["num_outer_steps"]
