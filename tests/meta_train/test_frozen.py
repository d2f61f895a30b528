"""Starting from an optimizer file and freezing parts of a chain (meta_train/recipe/frozen.py)."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from meta_train import config as C
from meta_train.recipe import frozen
from meta_train.runtime import run as R

_RULE = {"name": "mlp", "config": {"hidden_sizes": [8, 8]}}
_PARTS = {"parts": [_RULE, {"name": "schedule", "config": {}}]}
_TINY = ["run.num_outer_steps=2", "run.checkpoint_every=2", "run.log_every=1",
         "eval.enabled=false", "wandb.mode=disabled", "run.progress=off"]


def _chain_args(parts=None):
  return ["optimizer.name=chain", f"optimizer.kwargs={json.dumps(parts or _PARTS)}"]


def _rule_file(tmp_path, seed=3):
  """An ``mlp`` (8, 8) file with meta-parameters away from ``init``'s."""
  rule = learned_opt.MLPOptimizer(hidden_sizes=(8, 8))
  theta = jax.tree.map(lambda x: x + 0.25, rule.init(jax.random.key(seed)))
  path = str(tmp_path / "rule.safetensors")
  learned_opt.save(path, rule, theta)
  return path, theta


def _chain(tmp_path):
  built = C.build(C.resolve("smoke", _chain_args() + _TINY))
  return built.lopt


def test_a_file_start_takes_the_files_parts_and_inits_the_others(tmp_path):
  path, theta = _rule_file(tmp_path)
  lopt = _chain(tmp_path)
  start = frozen.from_file(lopt, path)
  got, fresh = start(jax.random.key(7)), lopt.init(jax.random.key(7))
  chex.assert_trees_all_equal(got["mlp"], theta)
  chex.assert_trees_all_equal(got["schedule"], fresh["schedule"])
  # One architecture started from a file of it: the file's meta-parameters.
  rule = learned_opt.MLPOptimizer(hidden_sizes=(8, 8))
  chex.assert_trees_all_equal(frozen.from_file(rule, path)(jax.random.key(0)), theta)


def test_a_file_whose_parts_do_not_fit_is_refused_naming_the_part(tmp_path):
  path, _ = _rule_file(tmp_path)
  wider = learned_opt.chain(learned_opt.MLPOptimizer(hidden_sizes=(16, 16)),
                            learned_opt.LearnedSchedule())
  with pytest.raises(ValueError, match="part 'mlp' has config"):
    frozen.file_parts(wider, path)
  with pytest.raises(ValueError, match=r"holds part\(s\) \['mlp'\] that the optimizer does not"):
    frozen.file_parts(learned_opt.LearnedSchedule(), path)
  with pytest.raises(ValueError, match="missing"):
    frozen.file_parts(wider, str(tmp_path / "missing.safetensors"))


def test_frozen_parts_train_only_the_rest_and_step_as_the_whole_chain(tmp_path):
  path, theta = _rule_file(tmp_path)
  lopt = _chain(tmp_path)
  fz, start = frozen.freeze(lopt, path, ["mlp"])
  assert fz.trainable == ["schedule"] and fz.horizon_aware == lopt.horizon_aware
  trainable = start(jax.random.key(1))
  assert set(trainable) == {"schedule"} and set(fz.init(jax.random.key(1))) == {"schedule"}
  # A schedule that halves every step (s = log 1/2 from its output bias).
  trainable = {"schedule": {**trainable["schedule"],
                            "b1": jnp.array([np.log(0.5)], jnp.float32)}}
  whole = {"mlp": theta, "schedule": trainable["schedule"]}
  params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.2])}
  grads = jax.tree.map(lambda p: 0.3 * p - 0.1, params)
  outs = []
  for tx in (fz.transform(trainable, num_steps=10), lopt.transform(whole, num_steps=10)):
    state = tx.init(params)
    u1, state = tx.update(grads, state, params, loss=jnp.array(1.5))
    u2, _ = tx.update(grads, state, optax.apply_updates(params, u1), loss=jnp.array(1.2))
    outs.append((u1, u2))
  chex.assert_trees_all_close(outs[0], outs[1], rtol=0, atol=0)
  # The halving is there: the same rule's steps without the schedule are twice as large.
  rule_tx = lopt.parts[0].transform(theta, num_steps=10)
  u_rule, _ = rule_tx.update(grads, rule_tx.init(params), params)
  chex.assert_trees_all_close(outs[0][0], jax.tree.map(lambda u: 0.5 * u, u_rule), rtol=1e-6)
  # The export is the whole chain with the file's rule.
  out_lopt, out_theta = frozen.exported(fz, trainable)
  assert out_lopt is lopt
  chex.assert_trees_all_equal(out_theta, whole)
  assert frozen.exported(lopt, whole) == (lopt, whole)
  with pytest.raises(TypeError, match="exported"):
    fz.config()
  with pytest.raises(ValueError, match="trainable parts"):
    fz.scale_by(whole)


def test_freezing_every_part_or_a_missing_part_is_refused(tmp_path):
  path, theta = _rule_file(tmp_path)
  lopt = _chain(tmp_path)
  with pytest.raises(ValueError, match="nothing to meta-train"):
    frozen.FrozenParts(lopt, {"mlp": theta, "schedule": lopt.init(jax.random.key(0))["schedule"]})
  with pytest.raises(ValueError, match="not parts of the chain"):
    frozen.FrozenParts(lopt, {"orthogonalize": {}})
  with pytest.raises(ValueError, match=r"\['schedule'\] are not in .*rule.safetensors"):
    frozen.freeze(lopt, path, ["schedule"])
  with pytest.raises(ValueError, match="need a chain"):
    frozen.FrozenParts(lopt.parts[0], {})


def test_pretrained_names_resolve_to_the_shipped_file():
  assert frozen.resolve_path("pretrained:default") == learned_opt.pretrained_path("default")
  assert frozen.resolve_path("a/b.safetensors") == "a/b.safetensors"


@pytest.mark.parametrize("overrides, field, words", [
    (["optimizer.frozen=mlp"], "optimizer.frozen", "set optimizer.start.scheme=file"),
    (["optimizer.start.scheme=file"], "optimizer.start.path", "needs the optimizer file"),
    (["optimizer.start.path=x.safetensors"], "optimizer.start.path",
     "only applies with optimizer.start.scheme=file"),
    (["optimizer.start.scheme=file", "optimizer.start.path=nowhere.safetensors"],
     "optimizer.start.path", "nowhere.safetensors"),
    (["optimizer.start.scheme=file", "optimizer.start.path=RULE", "optimizer.frozen=schedule"],
     "optimizer.frozen", "are not in"),
    (["optimizer.start.scheme=file", "optimizer.start.path=RULE", "optimizer.frozen=mlp,mlp"],
     "optimizer.frozen", "names a part twice"),
    (["optimizer.start.scheme=file", "optimizer.start.path=RULE",
      "optimizer.start.decay=1.0"], "optimizer.start.decay",
     "only applies with optimizer.start.scheme=adam_like or tuned_adam_like"),
])
def test_bad_file_starts_are_config_errors_before_any_compute(tmp_path, overrides, field, words):
  path, _ = _rule_file(tmp_path)
  overrides = [o.replace("RULE", path) for o in overrides]
  with pytest.raises(C.ConfigError) as e:
    C.build(C.resolve("smoke", _chain_args() + _TINY + overrides))
  assert e.value.path == field and words in str(e.value)


def test_frozen_needs_a_chain(tmp_path):
  path, _ = _rule_file(tmp_path)
  with pytest.raises(C.ConfigError, match="freezes parts of a chain") as e:
    C.build(C.resolve("smoke", _TINY + ["optimizer.start.scheme=file",
                                        f"optimizer.start.path={path}", "optimizer.frozen=mlp"]))
  assert e.value.path == "optimizer.frozen"


def test_switching_a_preset_to_a_file_start_drops_its_adam_like_settings():
  base = C.preset("quickstart")
  cfg = C.apply_overrides(base, ["optimizer.start.scheme=file", "optimizer.start.path=x"])
  assert cfg.optimizer.start == C.schema.StartConfig(scheme="file", path="x")


def test_a_two_phase_run_keeps_the_rule_and_exports_the_whole_chain(tmp_path):
  # Phase one's file: the chain with a rule away from init (as a meta-trained one would be).
  lopt = _chain(tmp_path)
  theta1 = lopt.init(jax.random.key(2))
  theta1["mlp"] = jax.tree.map(lambda x: x + 0.25, theta1["mlp"])
  first = str(tmp_path / "one.safetensors")
  learned_opt.save(first, lopt, theta1)
  # Phase two: the schedule meta-trained on phase one's frozen rule.
  two = _chain_args() + _TINY + ["optimizer.start.scheme=file",
                                 f"optimizer.start.path={first}", "optimizer.frozen=mlp"]
  result = R.run(C.resolve("smoke", two), tmp_path / "two")
  assert set(result.state.meta_params) == {"schedule"}
  lopt2, theta2 = learned_opt.load(str(tmp_path / "two" / R.OPTIMIZER_FILE))
  assert lopt2.part_names == ["mlp", "schedule"]
  chex.assert_trees_all_equal(theta2["mlp"], theta1["mlp"])
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       theta2["schedule"], theta1["schedule"])
  assert max(jax.tree.leaves(moved)) > 0  # the schedule was meta-trained
  record = json.loads((tmp_path / "two" / R.START_FILE).read_text())
  assert record == {"scheme": "file", "path": first, "sha256": frozen.file_digest(first)}
  prov = learned_opt.provenance(str(tmp_path / "two" / R.OPTIMIZER_FILE))
  assert prov["start"] == record and prov["config"]["optimizer"]["frozen"] == ["mlp"]
  # A resume from a start file that changed since is refused.
  learned_opt.save(first, *learned_opt.load(str(tmp_path / "two" / R.OPTIMIZER_FILE)))
  longer = [o.replace("run.num_outer_steps=2", "run.num_outer_steps=4") for o in two]
  with pytest.raises(R.RunDirError, match="not the one the run began from"):
    R.run(C.resolve("smoke", longer), tmp_path / "two")
