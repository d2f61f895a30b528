"""The ``meta-train`` command: generated help, overrides, clear errors, run-dir checks."""

import collections
import json
import os
import subprocess
import sys

import pytest

from meta_train import config as C
from meta_train.config import validation
from meta_train.runtime import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["optimizer.name=sgd_momentum", "task.kwargs.dim=2", "estimator.num_pairs=1",
        "estimator.truncation_length=2", "estimator.min_horizon=4", "estimator.max_horizon=4", "run.num_outer_steps=4",
        "run.checkpoint_every=2", "run.log_every=2"]


def test_help_lists_every_option_and_every_field_with_its_default(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  for option in ("--preset", "--run-dir", "--set", "--wandb", "--print-config"):
    assert option in out
  for name in C.PRESETS:
    assert f"  {name}: " in out
  lines = out.splitlines()
  for path, tname, value, _ in C.fields_table():
    shown = value if isinstance(value, str) else repr(value)
    assert any(f"{path} ({tname})" in line and f"= {shown} " in line for line in lines), path


def test_print_config_combines_positional_set_and_wandb(capsys):
  assert cli.main(["--preset", "smoke", "--print-config", "run.seed=3", "--set", "outer.lr=0.01",
                   "--set", "estimator.num_pairs=3", "--wandb", "online"]) == 0
  cfg = C.from_json(capsys.readouterr().out)
  assert cfg == C.resolve("smoke", ["run.seed=3", "outer.lr=0.01", "estimator.num_pairs=3",
                                    "wandb.mode=online"])
  assert cfg.wandb.mode == "online" and cfg.run.seed == 3 and cfg.estimator.num_pairs == 3


@pytest.mark.parametrize("args, expected", [
    (["estimator.num_pairs=0"], "estimator.num_pairs: must be > 0, got 0"),
    (["estimator.name=adam"], "estimator.name: expected one of ['tbptt', 'es', 'pes', 'full_es'], "
                              "got 'adam'"),
    (["--set", "outer.lrr=1"], "outer.lrr: unknown field"),
    (["estimator.truncation_length=999"],
     "estimator.truncation_length: must not exceed min_horizon (20), got 999"),
    (["run.seed=x"], "run.seed: expected int"),
    (["--set", "estimator.num_particles=16"],  # smoke is a pes preset: pes counts pairs
     "estimator.num_particles: does not apply to estimator 'pes', which would ignore it (its "
     "count of inner trainings is estimator.num_pairs); remove it"),
])
def test_config_errors_exit_with_a_message_naming_the_field(capsys, args, expected):
  with pytest.raises(SystemExit) as e:
    cli.main(["--preset", "smoke", *args])
  assert e.value.code == cli.EXIT_CONFIG_ERROR
  err = capsys.readouterr().err
  assert err.startswith("meta-train: config error: ")
  assert expected in err
  assert "Traceback" not in err


def test_a_run_builds_the_optimizer_family_and_estimator_once(tmp_path, monkeypatch, capsys):
  counts = collections.Counter()
  for name in ("build_optimizer", "build_family", "build_estimator"):
    def counted(*args, _real=getattr(validation, name), _name=name):
      counts[_name] += 1
      return _real(*args)
    monkeypatch.setattr(validation, name, counted)
  assert cli.main(["--preset", "smoke", "--run-dir", str(tmp_path), "--wandb", "disabled",
                   "run.progress=off", *TINY]) == 0
  assert "done, 4 outer steps" in capsys.readouterr().out
  assert counts == {"build_optimizer": 1, "build_family": 1, "build_estimator": 1}


def test_incompatible_run_dir_is_refused_naming_the_fields(tmp_path, capsys):
  other = C.resolve("smoke", TINY + ["estimator.sigma=0.5", "task.kwargs.dim=3"])
  (tmp_path / "config.json").write_text(C.to_json(other))
  with pytest.raises(SystemExit) as e:
    cli.main(["--preset", "smoke", "--run-dir", str(tmp_path), "--wandb", "disabled", *TINY])
  assert e.value.code == cli.EXIT_CONFIG_ERROR
  err = capsys.readouterr().err
  assert "refusing to resume" in err and "Traceback" not in err
  assert "estimator.sigma: run dir has 0.5, this run has 0.01" in err
  assert "task.kwargs.dim: run dir has 3, this run has 2" in err
  assert C.from_json((tmp_path / "config.json").read_text()) == other  # left untouched
  assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_unreadable_config_in_run_dir_is_refused(tmp_path, capsys):
  # The estimator section as written before its fields took the estimators' names.
  old = {"name": "pes", "num_particles": 4, "truncation": 5, "horizon": 20, "min_horizon": None}
  (tmp_path / "config.json").write_text(json.dumps({"estimator": old}))
  with pytest.raises(SystemExit) as e:
    cli.main(["--preset", "smoke", "--run-dir", str(tmp_path), *TINY])
  assert e.value.code == cli.EXIT_CONFIG_ERROR
  err = capsys.readouterr().err
  assert ("estimator.horizon: unknown field; known fields of estimator: name, num_pairs, "
          "num_particles, sigma, sign_delta, truncation_length, min_horizon, max_horizon, "
          "stagger, meta_loss") in err
  assert "another --run-dir" in err


def test_console_command_reports_config_errors_without_traceback():
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu", WANDB_MODE="disabled")
  out = subprocess.run([sys.executable, "-m", "meta_train.cli", "--preset", "smoke",
                        "estimator.name=es", "estimator.num_pairs=-1"],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
                       check=False)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "meta-train: config error: estimator.num_pairs: must be > 0, got -1"]
  assert out.stdout == ""
