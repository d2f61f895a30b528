"""Specialising to one family: the ``specialize`` preset and a user's family by import path,
from the config to ``meta-train`` and ``meta-eval`` (errors in one line, exit status 2)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from meta_train import config as C
from meta_train import evaluate as eval_lib
from meta_train.evaluation import cli as eval_cli
from meta_train.evaluation import suites
from meta_train.runtime import cli
from meta_train.runtime import run as run_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
USER = "user_family:tiny_regression"


@pytest.fixture
def user_package(monkeypatch):
  """``tests/fixtures`` importable, as a user's package on ``sys.path`` would be."""
  monkeypatch.syspath_prepend(str(FIXTURES))


def test_specialize_is_quickstarts_recipe_with_conv_kernels_in_the_harness():
  """The one difference is ``Orthogonalize(kernels=True)``; it moves a conv kernel's step and
  leaves every step of a family without kernels bit for bit as quickstart's (so `specialize`
  on `digits_mlp` is quickstart, LOG #86-#89)."""
  (path, quick, spec), = C.diff(C.preset("quickstart"), C.preset("specialize"))
  assert path == "optimizer.kwargs.parts"
  assert quick[1] == {"name": "orthogonalize", "config": {}} and quick[0] == spec[0]
  assert spec[1] == {"name": "orthogonalize", "config": {"kernels": True}}
  assert quick[2] == spec[2] == {"name": "cosine_decay", "config": {}} and len(spec) == 3
  cfg = C.resolve("specialize")
  assert cfg.task.family == "digits_mlp" and cfg.estimator.name == "pes"
  assert cfg.estimator.horizon_aware and cfg.outer.schedule == "cosine" and cfg.eval.enabled

  txs = {}
  for preset in ("quickstart", "specialize"):
    built = C.build(C.preset(preset))
    txs[preset] = built.lopt.transform(built.start(jax.random.key(0)))

  def step(preset, params):
    tx = txs[preset]
    grads = jax.tree_util.tree_map(lambda p: jnp.cos(3.0 * p) + 0.1, params)
    return tx.update(grads, tx.init(params), params, loss=jnp.asarray(1.0))[0]

  keys = jax.random.split(jax.random.key(1), 3)
  dense = {"w": jax.random.normal(keys[0], (12, 5)), "b": jax.random.normal(keys[1], (5,))}
  a, b = step("quickstart", dense), step("specialize", dense)
  for name in dense:
    np.testing.assert_array_equal(a[name], b[name])
  conv = {"k": jax.random.normal(keys[2], (3, 3, 4, 8))}
  a, b = step("quickstart", conv)["k"], step("specialize", conv)["k"]
  assert a.shape == b.shape == (3, 3, 4, 8) and not np.allclose(a, b, rtol=1e-2)


def test_an_import_path_family_is_built_by_the_config(user_package):
  del user_package
  built = C.build(C.apply_overrides(C.preset("specialize"), [f"task.family={USER}"]))
  assert built.cfg.task.family == USER and built.cfg.task.kwargs == {}
  assert built.family.name == "tiny_regression"
  assert built.estimator.family is built.family
  # task.kwargs apply to a dataclass family returned by the function, typed by its fields ...
  built = C.build(C.apply_overrides(C.preset("specialize"), [
      "task.family=user_family:small_quadratics", "task.kwargs.dim=5"]))
  assert built.family.dim == 5 and built.cfg.task.kwargs == {"dim": 5}
  # ... and are refused, naming the field, where the family has no such field.
  with pytest.raises(C.ConfigError, match="task.kwargs.dim: unknown field of SingleTaskFamily"):
    C.apply_overrides(C.preset("specialize"), [f"task.family={USER}", "task.kwargs.dim=5"])


@pytest.mark.parametrize("path, message", [
    ("no_such_package.families:make", "cannot import module 'no_such_package.families'"),
    ("user_family:missing", "'user_family' has no attribute 'missing'"),
    ("user_family:NOT_CALLABLE", "'NOT_CALLABLE' is not callable"),
    ("user_family:not_a_family", "not_a_family() returned a FunctionTask, not a "
                                 "tasks.TaskFamily"),
])
def test_meta_train_refuses_a_bad_path_in_one_line_with_exit_2(user_package, capsys, path,
                                                              message):
  del user_package
  with pytest.raises(SystemExit) as e:
    cli.main(["--preset", "specialize", "--print-config", "--set", f"task.family={path}"])
  assert e.value.code == cli.EXIT_CONFIG_ERROR
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith(f"meta-train: config error: task.family: task family {path!r}: ")
  assert message in line


def test_unknown_registered_name_mentions_the_import_path_form():
  with pytest.raises(C.ConfigError, match="known: .*digits_mlp.*or an import path "
                                          "package.module:function"):
    C.resolve("specialize", ["task.family=digits_mpl"])


def _save(path, family):
  lopt = learned_opt.Adam(initial_learning_rate=3e-2)
  learned_opt.save(str(path), lopt, lopt.init(jax.random.key(0)), provenance={
      "config": {"task": {"family": family, "kwargs": {}}, "estimator": {"max_horizon": 4}}})
  return str(path)


def test_meta_eval_refuses_a_training_family_it_cannot_import(tmp_path, capsys):
  path = _save(tmp_path / "opt.safetensors", "no_such_package.families:make")
  opt = suites.load_optimizer(path)
  with pytest.raises(suites.EvalError) as info:
    suites.build_family(suites.training_family(opt), opt)
  assert str(info.value).startswith(f"optimizer {path!r} was meta-trained on task family "
                                    f"'no_such_package.families:make': cannot import module")
  out = tmp_path / "report"
  assert eval_cli.main([path, "--suite", "in_distribution", "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "no_such_package.families:make" in err
  assert not out.exists()
  assert eval_cli.main(["pretrained:default", "--family", "quadratic",
                        "no_such_package.families:make", "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip()
  assert err == ("meta-eval: error: task family 'no_such_package.families:make': cannot import "
                 "module 'no_such_package.families' (No module named 'no_such_package'); is its "
                 "package installed or on PYTHONPATH?")
  assert not out.exists()
  # A family named with --family is not the one the optimizer was trained on: said plainly.
  with pytest.raises(suites.EvalError, match="^task family 'no_such_package.other:make'"):
    suites.build_family("no_such_package.other:make", opt)


def test_meta_eval_families_take_import_paths(user_package):
  del user_package
  suites.check_families(["quadratic", USER])  # no error: both build
  with pytest.raises(suites.EvalError, match="'user_family' has no attribute 'nope'"):
    suites.check_families(["quadratic", "user_family:nope"])


def test_meta_trains_end_of_run_evaluation_names_the_draws_by_task_family(tmp_path,
                                                                          monkeypatch,
                                                                          user_package):
  del user_package
  seen = {}

  def fake_evaluate_family(lopt, meta_params, family, family_name, config, **kwargs):
    seen.update(family=family, family_name=family_name, suite=kwargs["suite"])
    raise StopIteration  # the evaluation itself is tested elsewhere

  monkeypatch.setattr(eval_lib, "evaluate_family", fake_evaluate_family)
  built = C.build(C.apply_overrides(C.preset("specialize"), [f"task.family={USER}"]))
  with pytest.raises(StopIteration):
    run_lib.run_evaluation(built.cfg, built.lopt, None, built.family, str(tmp_path))
  # meta-eval's in_distribution suite names the same draws: the import path, not family.name.
  assert seen == {"family": built.family, "family_name": USER, "suite": "in_distribution"}


def _env(*paths):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(REPO),
                                       env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  env.update(WANDB_MODE="disabled", JAX_PLATFORMS="cpu")
  return env


def _run(args, env):
  return subprocess.run([sys.executable, "-m", *args], env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=300, check=False)


def test_cli_end_to_end_on_a_users_family(tmp_path, capsys, user_package):
  """meta-train on ``user_family:tiny_regression`` (a few outer steps; a fresh process that
  imports the user's module from PYTHONPATH), then meta-eval's in_distribution suite (in this
  process: its jax is already imported) builds the family again from the file's provenance."""
  del user_package
  run_dir, out = tmp_path / "run", tmp_path / "report"
  env = _env(FIXTURES)
  train = _run(["meta_train.cli", "--preset", "specialize", "--run-dir", str(run_dir),
                "--wandb", "disabled", "--set", f"task.family={USER}",
                "estimator.num_pairs=1", "estimator.truncation_length=2",
                "estimator.min_horizon=4", "estimator.max_horizon=4",
                "run.num_outer_steps=4", "run.steps_per_dispatch=2", "run.checkpoint_every=4",
                "run.log_every=2", "run.progress=off", "eval.enabled=false"], env)
  assert train.returncode == 0, train.stderr
  assert "done, 4 outer steps" in train.stdout
  opt_file = run_dir / "optimizer.safetensors"
  provenance = learned_opt.provenance(str(opt_file))
  assert provenance["config"]["task"]["family"] == USER
  assert provenance["config"]["estimator"]["meta_loss"] == "valid"
  assert provenance["config"]["optimizer"]["name"] == "chain"  # the rule inside the harness
  assert f"task.family={USER}" in provenance["command"]

  assert eval_cli.main([str(opt_file), "--suite", "in_distribution", "--num-tasks", "2",
                        "--num-seeds", "1", "--num-steps", "4", "--baselines", "adam",
                        "--no-cache", "--out", str(out)]) == 0
  results = json.loads((out / "eval.json").read_text())["results"]
  assert [(r["optimizer"], r["family"], r["baseline"]) for r in results] == [
      (str(opt_file), USER, "adam"), ("tuned adam", USER, "adam")]
  assert all(r["num_runs"] == 2 and r["num_steps"] == 4 for r in results)
  assert USER in capsys.readouterr().out

