"""Format v2 and the v1 files it still reads (:mod:`learned_opt.upgrade`).

Each v1 file must load and step as the code that wrote it did: 100 updates on the fixed stream
of ``update_stream.py`` (``num_steps=200``) against the summaries recorded in
``fixtures/update_stream_reference.json``, to float32 rounding (XLA's bytes differ between CPUs;
bit-identical within one process).
"""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy

import learned_opt
from learned_opt import file_format
from learned_opt import testing
from learned_opt import upgrade
from learned_opt.experimental import NormalizeStep


def _sibling(name):
  """A helper module next to this file (the tests are not a package)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__),
                                                                   f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


update_stream = _sibling("update_stream")

_FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# The quickstart report's file as format v1 wrote it (before quickstart's harness; kept here
# when reports/quickstart/optimizer.safetensors was regenerated).
_QUICKSTART = os.path.join(_FIXTURES, "v1_quickstart.safetensors")
# The shipped `default` as format v1 wrote it (before the harness default replaced it).
_V1_DEFAULT = os.path.join(_FIXTURES, "v1_default.safetensors")
# The shipped `diffusion` (the plain rule) as format v1 wrote it: a copy, so that its updates
# stay pinned when the recipe of LOG #116 replaces the shipped file.
_V1_DIFFUSION = os.path.join(_FIXTURES, "v1_diffusion.safetensors")

# The v1 files once shipped and their recorded cases.
SHIPPED = {"default": ("default_v1", _V1_DEFAULT), "diffusion": ("diffusion_v1", _V1_DIFFUSION)}
SCHEDULE_FILES = {"v1_normalize.safetensors": ("v1_normalize", "v1_normalize_eager"),
                  "v1_schedule.safetensors": ("v1_schedule", "v1_schedule_eager")}


def _matches(tx, case):
  n, jit = update_stream.stream(case)
  update_stream.assert_matches(update_stream.update_summary(tx, n, jit=jit),
                               update_stream.reference(case))


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_v1_files_give_the_same_updates(name):
  case, path = SHIPPED[name]
  assert file_format.read_document(path)[1]["format_version"] == 1  # kept as committed
  lopt, theta = learned_opt.load(path)
  assert type(lopt) is learned_opt.MLPOptimizer and lopt.horizon_aware
  _matches(lopt.transform(theta, num_steps=200), case)


def test_v1_quickstart_file_gives_the_same_updates():
  lopt, theta = learned_opt.load(_QUICKSTART)
  _matches(lopt.transform(theta, num_steps=200), "quickstart_v1")


@pytest.mark.parametrize("fixture", sorted(SCHEDULE_FILES))
def test_v1_schedule_files_load_as_chains_with_the_same_updates(fixture):
  lopt, theta = learned_opt.load(os.path.join(_FIXTURES, fixture))
  assert isinstance(lopt, learned_opt.Chain) and lopt.horizon_aware == (
      fixture == "v1_schedule.safetensors")  # from the v1 provenance
  assert lopt.parts[-1].name == "schedule"
  assert isinstance(lopt.parts[1], NormalizeStep) == (fixture == "v1_normalize.safetensors")
  tx = lopt.transform(theta, num_steps=200)
  for case in SCHEDULE_FILES[fixture]:
    _matches(tx, case)


def test_the_summary_tolerates_rounding_and_catches_a_changed_optimizer():
  """Eager and compiled updates differ in the last bits (XLA reassociates) and match; the same
  file with one meta-parameter moved by 0.1 % does not."""
  lopt, theta = learned_opt.load(os.path.join(_FIXTURES, "v1_schedule.safetensors"))
  tx = lopt.transform(theta, num_steps=200)
  jitted = update_stream.update_summary(tx, 30)
  eager = dict(update_stream.reference("v1_schedule_eager"))
  assert jitted["sumsq"] != eager["sumsq"]  # not the same bits ...
  update_stream.assert_matches(jitted, eager)  # ... the same updates
  leaves, treedef = jax.tree.flatten(theta)
  moved = jax.tree.unflatten(treedef, [leaves[0] * 1.001] + leaves[1:])
  changed = update_stream.update_summary(lopt.transform(moved, num_steps=200), 30)
  with pytest.raises(AssertionError):
    update_stream.assert_matches(changed, eager)


def test_v1_schedule_file_compiled_agrees_to_rounding():
  lopt, theta = learned_opt.load(os.path.join(_FIXTURES, "v1_schedule.safetensors"))
  tx = lopt.transform(theta, num_steps=200)
  params = update_stream.params_tree()
  grads = jax.tree.map(lambda p: 0.5 * p + 0.01, params)
  a, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, loss=1.5))(grads, tx.init(params), params)
  b, _ = tx.update(grads, tx.init(params), params, loss=1.5)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-9)  # float32 sums in either order


def test_upgrade_maps_every_v1_key():
  config = {"hidden_sizes": [8], "time_scales": [1.0, 10.0], "fuse_min_size": 1000,
            "init_scheme": "adam", "init_learning_rate": 0.01, "init_decay": 1.0,
            "schedule_hidden_size": 4, "schedule_loss_decays": [0.9], "schedule_normalize": True,
            "tensor_features": True, "tensor_grad_feature": False,
            "tensor_features_initial": True}
  meta = {"w0": 0, "b0": 1, "sched_w0": 2, "sched_b0": 3, "sched_w1": 4, "sched_b1": 5, "wt": 6}
  prov = {"config": {"estimator": {"horizon_aware": True}}}
  name, new, theta = upgrade.upgrade_v1("mlp", config, meta, prov)
  rule = {"hidden_sizes": [8], "time_scales": [1.0, 10.0], "step_mult": 1.0,
          "tensor": {"grad": False, "held": True}, "horizon_aware": True}
  assert name == "chain" and new == {"parts": [
      {"name": "mlp", "config": rule},
      {"name": "normalize_step", "config": {"learning_rate": 0.01, "horizon_aware": True}},
      {"name": "schedule", "config": {"hidden_size": 4, "time_scales": [1.0, 10.0],
                                      "loss_decays": [0.9], "horizon_aware": True}}]}
  assert theta == {"mlp": {"w0": 0, "b0": 1, "wt": 6}, "normalize_step": {},
                   "schedule": {"w0": 2, "b0": 3, "w1": 4, "b1": 5}}
  # Without a schedule: the rule alone; no provenance: not horizon-aware.
  name, new, _ = upgrade.upgrade_v1("mlp", {"hidden_sizes": [8], "schedule_hidden_size": 0,
                                            "schedule_loss_decays": [0.9]}, {}, {})
  assert (name, new) == ("mlp", {"hidden_sizes": [8], "tensor": None, "horizon_aware": False})
  assert upgrade.upgrade_v1("adam", {"learning_rate": 1.0}, {}, prov)[1] == {"learning_rate": 1.0}
  assert upgrade.upgrade_v1("adafactor_mlp", {}, {}, prov)[1] == {"horizon_aware": True}


def _rewrite(src, dst, edit):
  """Copies a file with its JSON document edited."""
  data, doc = file_format.read_document(src)
  edit(doc)
  tensors = {k: np.array(v) for k, v in safetensors.numpy.load_file(str(src)).items()}
  safetensors.numpy.save_file(tensors, str(dst), metadata={"learned_opt": json.dumps(doc)})
  return dst


def test_unknown_v1_and_v2_keys_are_refused_by_name(tmp_path):
  good = _V1_DEFAULT
  bad = _rewrite(good, tmp_path / "v1.safetensors", lambda d: d["config"].update(lstm_size=8))
  with pytest.raises(learned_opt.FileFormatError, match=r"unknown config keys \['lstm_size'\]"):
    learned_opt.load(bad)
  wrong = _rewrite(good, tmp_path / "v1t.safetensors",
                   lambda d: d["config"].update(tensor_features="yes"))
  with pytest.raises(learned_opt.FileFormatError, match=r"\['tensor_features'\]"):
    learned_opt.load(wrong)
  lopt, theta = learned_opt.load(good)
  learned_opt.save(tmp_path / "v2.safetensors", lopt, theta)
  bad = _rewrite(tmp_path / "v2.safetensors", tmp_path / "v2bad.safetensors",
                 lambda d: d["config"].update(init_scheme="adam"))
  with pytest.raises(learned_opt.FileFormatError, match=r"unknown config keys \['init_scheme'\]"):
    learned_opt.load(bad)  # v1 keys are only understood in v1 files


def test_v2_round_trip_is_bit_exact_and_records_horizon_awareness(tmp_path):
  lopt, theta = learned_opt.load(_V1_DEFAULT)
  path = tmp_path / "default_v2.safetensors"
  learned_opt.save(path, lopt, theta, provenance={"start": {"scheme": "adam_like"}})
  doc = file_format.read_document(path)[1]
  assert doc["format_version"] == file_format.FORMAT_VERSION == 2
  assert doc["config"]["horizon_aware"] is True and "init_scheme" not in doc["config"]
  lopt2, theta2, prov = learned_opt.read(path)
  assert lopt2 == lopt and prov == {"start": {"scheme": "adam_like"}}
  testing.assert_bitwise_equal(theta2, theta)
  assert (update_stream.update_hash(lopt2.transform(theta2, num_steps=200))
          == update_stream.update_hash(lopt.transform(theta, num_steps=200)))


@pytest.mark.parametrize("provenance, family", [
    ({"family": "digits_mlp", "config": {"task": {"family": "quadratic"}}}, "digits_mlp"),
    ({"config": {"task": {"family": "quadratic"}}}, "quadratic"),  # written before "family"
    ({"config": {"task": None}}, None), ({}, None), ({"family": 3}, None)])
def test_the_trained_family_from_old_and_new_provenance(provenance, family):
  from learned_opt import upgrade  # pylint: disable=import-outside-toplevel
  assert upgrade.trained_family(provenance) == family
