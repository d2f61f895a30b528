"""Typed run configuration: presets, overrides, validation before compilation, JSON round trip."""

import dataclasses
import json
import re
import typing

import jax
import pytest

import learned_opt
from learned_opt import testing
from meta_train import config as C
from meta_train.config import schema
from meta_train import unroll as ul
from meta_train.estimators import registry
from meta_train.runtime import run as R


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
  assert 2 * cfg.estimator.num_pairs * cfg.estimator.truncation_length <= 64


def test_presets_keep_their_meaning_after_the_estimator_renames():
  # Before the renames, particles counted both members of a pair and `horizon` was the longest.
  e = C.preset("smoke").estimator
  assert (e.name, e.num_pairs, e.truncation_length, e.min_horizon, e.max_horizon, e.sigma) == (
      "pes", 2, 5, 20, 20, 0.01)
  e = C.preset("quickstart").estimator
  assert (e.num_pairs, e.truncation_length, e.min_horizon, e.max_horizon) == (8, 20, 200, 200)
  e = C.preset("default").estimator
  assert (e.num_pairs, e.truncation_length, e.min_horizon, e.max_horizon) == (8, 20, 100, 500)
  assert e.group_by_member and e.member_pairs == (4, 4, 4, 4, 4, 2)
  assert C.preset("default").task.kwargs["members"][-2:] == ("diffusion_toy2d",
                                                              "diffusion_digits")


def test_estimator_fields_are_the_registry_fields():
  """Every setting of every registered estimator is an ``estimator.*`` field of the same name."""
  names = {f.name for f in dataclasses.fields(C.EstimatorConfig)}
  used = {"name", "group_by_member", "member_pairs", "group_clip",  # estimators/grouped.py's
          "member_overrides"}
  for name in registry.ESTIMATORS:
    assert set(registry.estimator_fields(name)) <= names, name
    used |= set(registry.estimator_fields(name))
  assert used == names  # and no field is unused by all of them
  assert typing.get_args(typing.get_type_hints(C.EstimatorConfig)["name"]) == (
      "tbptt", "es", "pes", "full_es")
  for name in ("tbptt", "es", "pes", "full_es"):
    cfg = C.resolve("smoke", _tiny(f"estimator.name={name}", "estimator.min_horizon=5",
                                   "estimator.max_horizon=5"))
    trainer, _, _ = R.build_trainer(cfg)
    assert type(trainer.estimator) is registry.ESTIMATORS[name]
    assert trainer.estimator.unroll == ul.UnrollConfig(
        truncation_length=5, min_horizon=5, max_horizon=5, meta_loss="train",
        stagger=name != "full_es")  # full_es: one whole unroll, never staggered


def test_overrides_are_parsed_against_field_types():
  cfg = C.resolve("smoke", _tiny(
      "estimator.num_pairs=6", "estimator.sigma=3e-3", "estimator.stagger=false",
      "estimator.min_horizon=10", "estimator.max_horizon=40", "outer.schedule=cosine",
      "wandb.entity=me", "wandb.name=none", "run.num_outer_steps=1_000",
      "optimizer.kwargs.initial_learning_rate=0.1", "optimizer.kwargs.learn_momentum=yes",
      "task.kwargs.init_scale=0.5,1.5", "task.kwargs.noise_scale=[0, 0]"))
  assert cfg.estimator.num_pairs == 6 and isinstance(cfg.estimator.num_pairs, int)
  assert cfg.estimator.sigma == 3e-3
  assert cfg.estimator.stagger is False
  assert cfg.estimator.min_horizon == 10 and cfg.estimator.max_horizon == 40
  assert cfg.outer.schedule == "cosine"
  assert cfg.wandb.entity == "me" and cfg.wandb.name is None
  assert cfg.run.num_outer_steps == 1000
  assert cfg.optimizer.kwargs == {"initial_learning_rate": 0.1, "learn_momentum": True}
  assert cfg.task.kwargs == {"dim": 4, "init_scale": (0.5, 1.5), "noise_scale": (0.0, 0.0)}
  assert C.from_json(C.to_json(cfg)) == cfg
  assert C.build_family(cfg).init_scale == (0.5, 1.5)
  assert C.build_optimizer(cfg) == learned_opt.SGDMomentum(initial_learning_rate=0.1,
                                                          learn_momentum=True)


def test_a_chain_is_built_from_its_parts_configs_with_the_horizon_set_on_each():
  parts = ('[{"name": "mlp", "config": {"hidden_sizes": [8]}}, '
           '{"name": "orthogonalize", "config": {"initial_mix": 0.5}}]')
  cfg = C.apply_overrides(C.preset("quickstart"), ["optimizer.name=chain",
                                                   f"optimizer.kwargs.parts={parts}"])
  lopt = C.build_optimizer(cfg)
  assert lopt == learned_opt.chain(
      learned_opt.MLPOptimizer(hidden_sizes=(8,), horizon_aware=True),
      learned_opt.Orthogonalize(initial_mix=0.5, horizon_aware=True))
  assert C.from_json(C.to_json(cfg)) == cfg
  assert set(C.build_start(cfg, lopt)(jax.random.key(0))) == {"mlp", "orthogonalize"}
  bad = [('[{"name": "mlp", "config": {"horizon_aware": true}}]',
          "optimizer.kwargs.parts[0].config.horizon_aware: is set from estimator.horizon_aware"),
         ('[{"name": "adamw", "config": {}}]', "optimizer.kwargs.parts[0]: must be {'name': <one"),
         ('[{"name": "mlp", "config": {"hidden": [8]}}]', "unknown config keys ['hidden']")]
  for text, message in bad:
    cfg = C.apply_overrides(C.preset("quickstart"), ["optimizer.name=chain",
                                                     f"optimizer.kwargs.parts={text}"])
    with pytest.raises(C.ConfigError, match=re.escape(message)):
      C.build_optimizer(cfg)


def test_changing_the_architecture_drops_the_preset_kwargs():
  base = C.preset("smoke")
  assert base.optimizer.kwargs  # the smoke preset sets architecture kwargs
  assert C.apply_overrides(base, ["optimizer.name=adam"]).optimizer.kwargs == {}
  cfg = C.apply_overrides(base, ["optimizer.name=adam", "optimizer.kwargs.b1=0.5"])
  assert cfg.optimizer.kwargs == {"b1": 0.5}


def test_switching_the_start_to_lecun_drops_the_presets_adam_like_settings():
  smoke = C.preset("smoke")  # as a preset with a decaying Adam-like start
  base = dataclasses.replace(smoke, optimizer=dataclasses.replace(
      smoke.optimizer, start=C.StartConfig("adam_like", learning_rate=5e-3, decay=3.0)))
  cfg = C.apply_overrides(base, ["optimizer.start.scheme=lecun"])
  assert cfg.optimizer.start == C.schema.StartConfig()
  lopt = learned_opt.MLPOptimizer()
  assert C.validation.build_start(cfg, lopt) == lopt.init
  # A setting given on the command line stays, and is refused by name.
  given = C.apply_overrides(base, ["optimizer.start.scheme=lecun", "optimizer.start.decay=1.0"])
  assert given.optimizer.start.decay == 1.0
  with pytest.raises(C.ConfigError, match="optimizer.start.decay"):
    C.validation.build_start(given, lopt)


@pytest.mark.parametrize("override, field, words", [
    ("estimator.num_pair=4", "estimator.num_pair", "unknown field"),
    ("estimatr.name=pes", "estimatr.name", "unknown field"),
    ("estimator.num_pairs=four", "estimator.num_pairs", "expected int, got 'four'"),
    ("run.seed=1.5", "run.seed", "expected int"),
    ("outer.lr=fast", "outer.lr", "expected float"),
    ("estimator.stagger=maybe", "estimator.stagger", "expected bool"),
    ("estimator.name=sgd", "estimator.name",
     "expected one of ['tbptt', 'es', 'pes', 'full_es'], got 'sgd'"),
    ("estimator.num_pairs=0", "estimator.num_pairs", "must be > 0, got 0"),
    ("estimator.truncation_length=50", "estimator.truncation_length",
     "must not exceed min_horizon (20), got 50"),
    ("estimator.min_horizon=30", "estimator.min_horizon", "must not exceed max_horizon (20), got 30"),
    ("estimator.max_horizon=0", "estimator.max_horizon", "must be > 0, got 0"),
    ("estimator.sigma=0", "estimator.sigma", "must be > 0, got 0.0"),
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
    ("estimator.num_pairs", "estimator.num_pairs", "field.path=value"),
])
def test_invalid_overrides_name_the_field(override, field, words):
  extra = ["run.steps_per_dispatch=2"] if field == "run.log_every" else []
  with pytest.raises(C.ConfigError) as e:
    C.resolve("smoke", _tiny(*extra, override))
  assert str(e.value).startswith(field + ": ") and e.value.path == field, str(e.value)
  assert words in str(e.value)


def test_estimators_check_their_own_fields_and_full_es_needs_fixed_horizon():
  cfg = C.resolve("smoke", _tiny("estimator.name=tbptt", "estimator.num_particles=3"))
  assert cfg.estimator.num_particles == 3
  # The smoke preset's 2 pairs were pes's: switching estimator drops them (back to the default).
  assert cfg.estimator.num_pairs == registry.field_default("num_pairs") == 8
  with pytest.raises(C.ConfigError) as e:
    C.resolve("smoke", _tiny("estimator.name=tbptt", "estimator.num_particles=0"))
  assert str(e.value) == "estimator.num_particles: must be > 0, got 0"
  with pytest.raises(C.ConfigError) as e:
    C.resolve("smoke", _tiny("estimator.name=full_es", "estimator.min_horizon=10"))
  assert str(e.value) == ("estimator.min_horizon: full_es unrolls one fixed horizon: must equal "
                          "max_horizon (20), got 10")


@pytest.mark.parametrize("name, field, value, applies", [
    ("tbptt", "num_pairs", "3", "its count of inner trainings is estimator.num_particles"),
    ("tbptt", "sigma", "0.1", "it takes estimator.num_particles besides the unroll's fields"),
    ("es", "num_particles", "16", "its count of inner trainings is estimator.num_pairs"),
    ("pes", "num_particles", "16", "its count of inner trainings is estimator.num_pairs"),
    ("pes", "final_batches", "4", "a truncated unroll has no final loss; full_es recomputes it"),
    ("tbptt", "final_batches", "4", "a truncated unroll has no final loss; full_es recomputes it"),
    ("full_es", "num_particles", "16", "its count of inner trainings is estimator.num_pairs"),
    ("full_es", "truncation_length", "5", "it unrolls each inner training whole, from its first "
                                          "step, over estimator.max_horizon"),
    ("full_es", "stagger", "false", "it unrolls each inner training whole, from its first step, "
                                    "over estimator.max_horizon"),
])
def test_a_field_the_estimator_would_ignore_is_refused(name, field, value, applies):
  with pytest.raises(C.ConfigError) as e:
    C.resolve("smoke", _tiny(f"estimator.name={name}", f"estimator.{field}={value}"))
  assert e.value.path == f"estimator.{field}"
  assert str(e.value) == (f"estimator.{field}: does not apply to estimator {name!r}, which "
                          f"would ignore it ({applies}); remove it")
  # The same refusal for a config built in code (not through overrides).
  base = C.resolve("smoke", _tiny(f"estimator.name={name}"))
  bad = dataclasses.replace(base, estimator=dataclasses.replace(
      base.estimator, **{field: value == "true" if value in ("true", "false")
                         else type(getattr(base.estimator, field))(float(value))}))
  with pytest.raises(C.ConfigError, match=rf"^estimator\.{field}: does not apply"):
    C.validate(bad)


def test_the_count_is_refused_when_member_pairs_sets_each_group():
  with pytest.raises(C.ConfigError) as e:
    C.resolve("diffusion", ["estimator.num_pairs=4"])
  assert str(e.value) == ("estimator.num_pairs: is ignored when estimator.member_pairs is given "
                          "(each group's count is there); remove it or set "
                          "estimator.member_pairs=none")
  cfg = C.resolve("diffusion", ["estimator.num_pairs=4", "estimator.member_pairs=none"])
  assert cfg.estimator.num_pairs == 4 and cfg.estimator.member_pairs is None


def test_estimator_defaults_are_the_estimators_own():
  """One source of defaults: ``estimator.*`` defaults are the classes' (and the unroll's)."""
  spec = C.EstimatorConfig()
  for field in {f for n in registry.ESTIMATORS for f in registry.estimator_fields(n)}:
    owner = ul.UnrollConfig() if field in registry.UNROLL_FIELDS else next(
        cls for cls in registry.ESTIMATORS.values() if field in cls.own_fields())
    assert getattr(spec, field) == getattr(owner, field), field
  assert (spec.num_pairs, spec.num_particles, spec.sigma) == (8, 8, 0.01)


def test_from_dict_rejects_unknown_and_mistyped_fields():
  data = C.to_dict(C.resolve("smoke"))
  data["run"]["sed"] = 1
  with pytest.raises(C.ConfigError, match=r"^run\.sed: unknown field"):
    C.from_dict(data)
  data = C.to_dict(C.resolve("smoke"))
  data["estimator"]["num_pairs"] = True  # a bool is not an int
  with pytest.raises(C.ConfigError, match=r"^estimator\.num_pairs: expected int, got True$"):
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
  assert "estimator.num_pairs" in paths and "run.checkpoint_every" in paths
  assert "optimizer.kwargs" in paths and "eval.enabled" in paths
  def leaves(obj):
    return sum(leaves(getattr(obj, f.name)) if dataclasses.is_dataclass(getattr(obj, f.name))
               else 1 for f in dataclasses.fields(obj))

  assert len(rows) == leaves(C.RunConfig())
  assert "optimizer.start.scheme" in paths
  assert all(help_text for _, _, _, help_text in rows)


@pytest.mark.parametrize("name", learned_opt.list_pretrained())
def test_shipped_pretrained_optimizers_were_made_by_their_presets(name):
  """learned_opt/pretrained/NAME.safetensors must be reproducible with `--preset NAME`."""
  info = learned_opt.provenance(learned_opt.pretrained_path(name))
  assert info["command"].startswith(f"meta-train --preset {name} ")
  # Read like a run directory's config: fields added since the file was made take their
  # defaults (which leave the optimizer as it was).
  shipped = C.to_dict(C.from_dict(info["config"]))
  preset = C.to_dict(C.resolve(name))
  # Logging, reporting and the device count do not change the optimizer.
  for section in ("wandb", "eval"):
    shipped.pop(section), preset.pop(section)
  shipped["run"].pop("num_devices"), preset["run"].pop("num_devices")
  shipped["run"].pop("progress"), preset["run"].pop("progress")
  assert shipped == preset
  assert info["outer_step"] == preset["run"]["num_outer_steps"]


def test_a_sections_own_check_becomes_a_config_error_naming_the_field():
  # EvalConfig checks its fields in __post_init__ (it is shared with meta-eval); an override
  # that breaks the check must name the field path, not end in a traceback.
  with pytest.raises(C.ConfigError) as err:
    C.resolve("smoke", ["eval.num_tasks=0"])
  assert err.value.path == "eval.num_tasks"
  assert str(err.value) == "eval.num_tasks: EvalConfig.num_tasks must be a positive int, got 0"
  with pytest.raises(C.ConfigError) as err:
    C.from_json('{"eval": {"warmup_fraction": 1.5}}')
  assert err.value.path == "eval.warmup_fraction"


# --- optimizer.start and the optimizer's horizon awareness -----------------------------------


_sha = testing.tree_digest


# sha256 of the presets' initial meta-parameters for key(11), recorded when the start was the
# optimizer's init_scheme="adam" (+ init_decay=3.0) fields: the presets start where they did.
# quickstart's (and specialize's) rule was recorded when the cosine decay became the chain's last
# part (LOG #99-#103): the same Adam-like step without the initial decay. default took the same
# rule and start with quickstart's recipe (LOG #112-#115), then diffusion (LOG #116-#117).
_UNDECAYED_RULE = "115e40eb6ef67b851419fbcb6fcd127095d61870ce123bbdd6fe301808990d98"
# default's rule is the chain's second part since LOG #141 (the clip is first), and so draws its
# start from the second part's key: the same scheme, another draw; diffusion's since #153.
_RULE_BEHIND_CLIP = "94ffae542dcc91eaa482effb0f75bf9f1078190a7e8d2b5503c24632c830157a"
_PRESET_STARTS = {
    "quickstart": _UNDECAYED_RULE,
    "specialize": _UNDECAYED_RULE,
    "default": _RULE_BEHIND_CLIP,
    "diffusion": _RULE_BEHIND_CLIP,
}
_PRESET_DECAYS = {"quickstart": 0.0, "specialize": 0.0, "diffusion": 0.0, "default": 0.0}
_IN_HARNESS_UNDER_DECAY = ["mlp", "orthogonalize", "cosine_decay"]
_PRESET_PARTS = {name: _IN_HARNESS_UNDER_DECAY for name in _PRESET_STARTS}
# default's chain since LOG #141: behind the clip, with the held parameter scale.
_PRESET_PARTS["default"] = ["clip", "mlp", "orthogonalize", "param_scale", "cosine_decay"]
# diffusion's since LOG #153: behind the clip.
_PRESET_PARTS["diffusion"] = ["clip", "mlp", "orthogonalize", "cosine_decay"]


@pytest.mark.parametrize("name", sorted(_PRESET_STARTS))
def test_presets_keep_their_meta_parameter_starts(name):
  built = C.build(C.preset(name))
  assert built.cfg.optimizer.start == C.StartConfig("adam_like", learning_rate=5e-3,
                                                    decay=_PRESET_DECAYS[name])
  assert built.lopt.horizon_aware is built.cfg.estimator.horizon_aware is True
  start = built.start(jax.random.key(11))
  if isinstance(built.lopt, learned_opt.Chain):  # the rule inside the harness starts as it did
    assert built.lopt.part_names == _PRESET_PARTS[name]
    harness = start.pop("orthogonalize")
    assert _sha(harness) == _sha(learned_opt.Orthogonalize().init(jax.random.key(0)))
    if "clip" in start:  # the threshold starts at max_norm itself: e^0
      assert float(start.pop("clip")["log_max_norm"]) == 0.0
    if "param_scale" in start:  # the scale starts as the piece's own
      scale = learned_opt.ParamScale(**schema.PARAM_SCALE_AT_INIT["config"])
      assert _sha(start.pop("param_scale")) == _sha(scale.init(jax.random.key(0)))
    if "cosine_decay" in start:  # the decay starts as the identity: e^0 = 1
      decay = start.pop("cosine_decay")
      assert list(decay) == ["log_scale"] and float(decay["log_scale"]) == 0.0
    start = start["mlp"]
  assert _sha(start) == _PRESET_STARTS[name]


def test_start_section_lecun_default_and_strict_fields():
  built = C.build(C.preset("smoke"))
  assert built.cfg.optimizer.start.scheme == "lecun" and not built.lopt.horizon_aware
  assert _sha(built.start(jax.random.key(3))) == _sha(built.lopt.init(jax.random.key(3)))
  cfg = C.resolve("smoke", ["optimizer.start.scheme=adam_like", "optimizer.start.decay=2",
                            "estimator.horizon_aware=true"])
  built = C.build(cfg)
  assert built.lopt.horizon_aware
  want = learned_opt.inits.adam_like(built.lopt, jax.random.key(3), decay=2.0)
  assert _sha(built.start(jax.random.key(3))) == _sha(want)
  cases = [
      (["optimizer.start.decay=2"], "optimizer.start.decay", "only applies with"),
      (["optimizer.start.scheme=adam_like", "optimizer.start.learning_rate=0"],
       "optimizer.start.learning_rate", "learning_rate must be > 0"),
      (["optimizer.start.scheme=adam_like", "optimizer.kwargs.hidden_sizes=[8, 1]"],
       "optimizer.start.scheme", "width >= 2"),
      (["optimizer.kwargs.horizon_aware=true"], "optimizer.kwargs.horizon_aware",
       "set from estimator.horizon_aware"),
      (["optimizer.kwargs.init_scheme=adam"], "optimizer.kwargs.init_scheme",
       "unknown field of MLPOptimizer"),
  ]
  for overrides, field, message in cases:
    with pytest.raises(C.ConfigError, match=message) as e:
      C.resolve("smoke", overrides)
    assert e.value.path == field, overrides


def test_nested_optimizer_config_from_the_command_line():
  cfg = C.resolve("smoke", ['optimizer.kwargs.tensor={"grad": false}'])
  built = C.build(cfg)
  assert built.lopt.tensor == learned_opt.TensorFeatures(grad=False)
  assert C.from_json(C.to_json(cfg)) == cfg


def test_an_older_config_reads_its_init_kwargs_as_the_start():
  old = C.to_dict(C.preset("smoke"))
  old["optimizer"] = {"name": "mlp", "kwargs": {"hidden_sizes": [16, 16], "init_scheme": "adam",
                                                "init_decay": 3.0, "exp_mult": 1.0}}
  cfg = C.from_dict(old)
  assert cfg.optimizer.kwargs == {"hidden_sizes": (16, 16), "exp_mult": 1.0}
  assert cfg.optimizer.start == C.StartConfig("adam_like", learning_rate=5e-3, decay=3.0)
  old["optimizer"]["kwargs"] = {"init_scheme": "lecun", "init_learning_rate": 0.1}
  assert C.from_dict(old).optimizer == C.OptimizerConfig("mlp", {}, C.StartConfig())
