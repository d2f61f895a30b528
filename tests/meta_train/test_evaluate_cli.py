"""meta-eval: one-line errors (exit 2, nothing written), suites from provenance, a tiny end-to-end
run with its report, cache and offline wandb run read back."""

import glob
import json
import logging
import os
import struct
import sys
import time

import jax
import numpy as np
import pytest

import learned_opt
from meta_train.evaluation import cli
from meta_train.evaluation import config as config_lib
from meta_train.evaluation import runner
from meta_train.evaluation import suites
from meta_train.evaluation import wandb_log


def _save(path, family="quadratic", horizon=3, kwargs=None):
  lopt = learned_opt.Adam(initial_learning_rate=3e-2)
  learned_opt.save(str(path), lopt, lopt.init(jax.random.key(0)),
                   provenance={"config": {"task": {"family": family, "kwargs": kwargs or {}},
                                          "estimator": {"horizon": horizon}}})
  return str(path)


@pytest.mark.parametrize("args, needle, choices", [
    (["pretrained:default", "--suite", "nope"], "'nope'", "in_distribution"),
    (["pretrained:default", "--family", "quadratic", "nope"], "'nope'", "digits_mlp"),
    (["pretrained:nope", "--suite", "in_distribution"], "'nope'", "pretrained:default"),
    (["/no/such/file.safetensors", "--suite", "in_distribution"], "/no/such/file.safetensors",
     "pretrained:default"),
    (["pretrained:default", "--suite", "in_distribution", "--wandb", "loud"], "'loud'", "offline"),
    (["pretrained:default", "--suite", "in_distribution", "--draws", "test"], "'test'", "report"),
    (["pretrained:default", "--suite", "in_distribution", "--baselines", "adam,lion"], "'lion'",
     "muon_cosine"),
])
def test_bad_requests_fail_with_one_line_and_write_nothing(tmp_path, capsys, args, needle,
                                                           choices):
  out = tmp_path / "out"
  assert cli.main(args + ["--out", str(out)]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert err.startswith("meta-eval: error:") and needle in err and choices in err
  assert not out.exists()


def test_malformed_file_fails_with_one_line(tmp_path, capsys):
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes(b"not a safetensors file")
  assert cli.main([str(bad), "--suite", "in_distribution", "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "malformed optimizer file" in err and str(bad) in err
  assert not (tmp_path / "o").exists()


def test_an_out_that_cannot_be_a_report_directory_fails_before_any_evaluation(tmp_path, capsys):
  existing = tmp_path / "a_file"
  existing.write_text("x")
  assert cli.main(["pretrained:default", "--suite", "in_distribution", "--out",
                   str(existing)]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "not a directory" in err and str(existing) in err
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  try:
    if not os.access(locked, os.W_OK):  # root may write anywhere
      assert cli.main(["pretrained:default", "--suite", "in_distribution", "--out",
                       str(locked / "r")]) == 2
      assert "not writable" in capsys.readouterr().err
  finally:
    locked.chmod(0o700)
  assert cli._out_dir_problem(str(tmp_path / "new" / "deeper")) is None


def test_usage_errors_are_one_line_with_exit_2(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["pretrained:default", "--suite"])  # argparse's own: --suite needs a value
  assert e.value.code == 2
  assert len(capsys.readouterr().err.strip().splitlines()) == 1
  out = str(tmp_path / "o")
  for args, needle in [([], "--suite SUITE or --family NAME"),
                       (["--suite", "in_distribution", "--family", "quadratic"],
                        "only long_horizon takes --family")]:
    assert cli.main(["pretrained:default", *args, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
  assert not os.path.exists(out)


def test_help_lists_the_suites(capsys):
  with pytest.raises(SystemExit):
    cli.main(["--help"])
  out = capsys.readouterr().out
  for s in config_lib.SUITES:
    assert s in out


def test_suites_from_provenance(tmp_path):
  opt = suites.load_optimizer(_save(tmp_path / "m.safetensors", "mixture", horizon=50))
  cfg = config_lib.EvalConfig()
  (ind,) = suites.plan("in_distribution", opt, cfg)
  assert ind.family == "mixture" and ind.baselines == config_lib.BASELINES
  assert suites.plan("in_distribution", opt, cfg, ("adam",))[0].baselines == ("adam",)
  ood = [p.family for p in suites.plan("out_of_distribution", opt, cfg)]
  trained = {"mixture", "digits_mlp", "gaussian_mixture_mlp", "mnist1d_mlp", "quadratic"}
  assert not trained & set(ood)
  assert len(ood) >= 4 and len({suites.KINDS[f] for f in ood}) >= 3
  (lh,) = suites.plan("long_horizon", opt, cfg)
  assert lh.family == "mixture" and lh.num_steps == 500 and lh.baselines == ("adam",)
  # The shipped default: trained on a mixture, so its own OOD suite excludes its members.
  default = suites.load_optimizer("pretrained:default")
  assert suites.training_family(default) == "mixture"
  members = set(default.run_config["task"]["kwargs"].get("members", ())) or trained
  assert not (members | {"mixture"}) & set(suites.out_of_distribution_families(default))


def test_a_mixture_is_evaluated_with_the_members_it_was_trained_on(tmp_path):
  path = _save(tmp_path / "m.safetensors", "mixture",
               kwargs={"members": ["quadratic", "diffusion_toy2d"], "weights": [1, 3]})
  opt = suites.load_optimizer(path)
  family = suites.build_family("mixture", opt)
  assert [f.name for f in family.families] == ["quadratic", "diffusion_toy2d"]
  assert family.weights == (1, 3)
  assert suites.training_families(opt) == {"mixture", "quadratic", "diffusion_toy2d"}
  assert "diffusion_toy2d" not in suites.out_of_distribution_families(opt)
  # Other families are built as registered.
  assert suites.build_family("digits_mlp", opt) == suites.tasks.get("digits_mlp")
  bad = suites.load_optimizer(_save(tmp_path / "b.safetensors", "mixture",
                                    kwargs={"members": ["nope"]}))
  with pytest.raises(suites.EvalError, match="do not build family 'mixture'"):
    suites.build_family("mixture", bad)


def test_long_horizon_reads_max_horizon_and_the_old_horizon_field(tmp_path):
  lopt = learned_opt.Adam(initial_learning_rate=3e-2)
  path = str(tmp_path / "n.safetensors")
  learned_opt.save(path, lopt, lopt.init(jax.random.key(0)), provenance={"config": {
      "task": {"family": "quadratic"}, "estimator": {"min_horizon": 20, "max_horizon": 40}}})
  (lh,) = suites.plan("long_horizon", suites.load_optimizer(path), config_lib.EvalConfig())
  assert lh.num_steps == 400


def test_long_horizon_on_named_families(tmp_path):
  # --suite long_horizon --family F...: those families (e.g. one member of a mixture) at 10x
  # the training horizon, tuned constant Adam of the same length, speed-ups capped at 1.
  opt = suites.load_optimizer(_save(tmp_path / "m.safetensors", "mixture", horizon=50))
  cfg = config_lib.EvalConfig()
  plans = suites.plan("long_horizon", opt, cfg, families=["quadratic", "diffusion_digits"])
  assert [(p.family, p.num_steps, p.baselines, p.envelope_factor) for p in plans] == [
      ("quadratic", 500, ("adam",), 1.0), ("diffusion_digits", 500, ("adam",), 1.0)]
  with pytest.raises(suites.EvalError, match="only long_horizon takes families"):
    suites.plan("in_distribution", opt, cfg, families=["quadratic"])
  # From the command line: the named family's runs, 10x the file's horizon of 3.
  path, out = _save(tmp_path / "q.safetensors", "mixture", horizon=3), tmp_path / "lh"
  assert cli.main([path, "--suite", "long_horizon", "--family", "quadratic", "--num-tasks", "2",
                   "--num-seeds", "1", "--no-cache", "--out", str(out)]) == 0
  results = json.loads((out / "eval.json").read_text())["results"]
  assert [(r["family"], r["suite"], r["num_steps"], r["baseline"], r["num_runs"])
          for r in results] == [("quadratic", "long_horizon", 30, "adam", 2)] * len(results)
  assert results[0]["optimizer"] == path and results[0]["speedup_cap"] == 1.0


def test_eval_draws_are_not_meta_trainings_keys():
  key = suites.eval_key(0, "quadratic")
  data = np.asarray(jax.random.key_data(key))
  root = jax.random.key(0)
  for k in [root, *jax.random.split(root, 8)]:
    assert not np.array_equal(np.asarray(jax.random.key_data(k)), data)


def read_wandb_records(path):
  """Records of an offline ``.wandb`` file (LevelDB-log framing of wandb protobuf Records)."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=import-outside-toplevel
  data = open(path, "rb").read()
  block, pos, pending, records = 32768, 7, b"", []
  while pos + 7 <= len(data):
    if block - pos % block < 7:
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    if pos + 7 + length > len(data):  # a record wandb's writer has not finished: read up to it
      break
    chunk = data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):
      rec = wandb_internal_pb2.Record()
      rec.ParseFromString(pending + chunk)
      records.append(rec)
      pending = b""
    elif kind in (2, 3):
      pending += chunk
  return records


def wandb_history(out_dir):
  """``({key: value}, files dir)`` of the offline run under ``out_dir`` (nested keys joined
  by "/")."""
  files = glob.glob(os.path.join(out_dir, "wandb", "offline-run-*", "run-*.wandb"))
  assert len(files) == 1, files
  items = {}
  for _ in range(60):  # wandb's writer may still be flushing the file after run.finish()
    records = read_wandb_records(files[0])
    if any(r.WhichOneof("record_type") == "exit" for r in records):
      break
    time.sleep(0.5)
  for rec in records:
    if rec.WhichOneof("record_type") == "history":
      for i in rec.history.item:
        items[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
  return items, os.path.join(os.path.dirname(files[0]), "files")


def read_table(items, files_dir, key):
  """The ``wandb.Table`` logged under ``key``, read back from the run's files."""
  assert items[f"{key}/_type"] == "table-file"
  with open(os.path.join(files_dir, items[f"{key}/path"]), encoding="utf-8") as f:
    return json.load(f)


def test_end_to_end_report_cache_and_wandb(tmp_path, capsys, request):
  handler = logging.StreamHandler(sys.stderr)  # a root handler, as a library's basicConfig adds
  logging.getLogger().addHandler(handler)
  request.addfinalizer(lambda: logging.getLogger().removeHandler(handler))
  opt_path = _save(tmp_path / "opt.safetensors")
  out, cache = tmp_path / "report", tmp_path / "cache"
  args = [opt_path, "--suite", "in_distribution", "--num-tasks", "2", "--num-seeds", "2",
          "--num-steps", "4", "--cache-dir", str(cache), "--baselines", "adam,adam_cosine",
          "--draws", "report"]
  assert cli.main(args + ["--out", str(out), "--wandb", "offline"]) == 0
  captured = capsys.readouterr()
  printed = captured.out
  # Progress on stderr: a line per baseline grid that ran (constant Adam's runs 4N steps).
  assert ": adam, 16 steps, " in captured.err and ": adam_cosine, 4 steps, " in captured.err
  assert f"{opt_path}'s 4 runs of 4 steps ..." in captured.err  # the learned runs, as they start
  grid_lines = [l for l in captured.err.splitlines() if " steps, " in l]
  # Each once, with a root handler configured too (a second handler would repeat every line;
  # a grid's start and end lines differ, two grids of one size may not).
  assert grid_lines and all(a != b for a, b in zip(grid_lines, grid_lines[1:]))
  data = json.loads((out / "eval.json").read_text())
  results = data["results"]
  assert [(r["optimizer"], r["baseline"]) for r in results] == [
      (opt_path, "adam"), (opt_path, "adam_cosine"), ("tuned adam", "adam"),
      ("tuned adam_cosine", "adam")]
  for r in results:
    for k in ("optimizer", "role", "family", "baseline", "num_steps", "speedup_median",
              "speedup_iqm", "diverged_runs", "speedup_median_ci", "draws"):
      assert k in r, k
    assert r["num_steps"] == 4 and r["num_runs"] == 4 and r["draws"] == "report"
  for r in results[:2]:
    for k in ("win_fraction", "win_fraction_test", "win_fraction_ci", "final_loss_ratio_median",
              "final_loss_ratio_test_median", "seconds_per_step_learned",
              "wallclock_speedup_median"):
      assert k in r, k
  assert data["meta"]["config"]["draws"] == "report"
  assert str(cache) not in (out / "eval.json").read_text()  # where a cache lives is not a result
  md = (out / "eval.md").read_text()
  assert "| optimizer |" in md and "adam_cosine" in md and "95%" in md and "↳ tuned adam" in md
  assert "VeLO" in md and "task-level bootstrap" in md
  assert "adam_cosine" in printed and "quadratic" in printed
  for png in ("speedup_in_distribution.png",):
    assert (out / png).stat().st_size > 1000
  assert glob.glob(str(out / "curves_in_distribution_*.png"))
  # Second run: every baseline curve comes from the cache, the numbers are identical.
  assert cli.main(args + ["--out", str(tmp_path / "again")]) == 0
  assert " steps, " not in capsys.readouterr().err  # no grid ran: every curve was cached
  again = json.loads((tmp_path / "again" / "eval.json").read_text())
  assert again["meta"]["cache"]["misses"] == 0
  timing = lambda rs: [{k: v for k, v in r.items()
                        if not k.startswith(("seconds_per_step", "wallclock"))} for r in rs]
  assert timing(again["results"]) == timing(results)  # all but the measured wall-clock
  # The offline wandb run: curves as line series and the results table, read back.
  items, files_dir = wandb_history(str(out))
  table = read_table(items, files_dir, "results")
  assert len(table["data"]) == 4
  row = dict(zip(table["columns"], table["data"][1]))
  assert row["baseline"] == "adam_cosine" and row["win_fraction"] == results[1]["win_fraction"]
  (curve_key,) = {k.rsplit("/", 1)[0] for k in items if k.startswith("curves/")}
  assert curve_key.endswith("quadratic_table")
  series = read_table(items, files_dir, curve_key)
  assert len(series["data"]) == 3 * 5  # learned, tuned adam, tuned cosine; steps 0..4
  assert {r[series["columns"].index("lineKey")] for r in series["data"]} == {
      "learned", "tuned adam", "tuned adam_cosine"}


def test_wandb_diffusion_samples_panel(tmp_path):
  """The samples panel (learned vs tuned Adam) reaches the offline run as an image."""
  rng = np.random.default_rng(0)
  samples = {"learned": rng.normal(size=(32, 2)), "adam": rng.normal(size=(32, 2)),
             "data": rng.normal(size=(32, 2)), "adam_learning_rate": np.array(1e-3)}
  entry = {"optimizer": "o", "suite": "s", "family": "diffusion_toy2d", "baseline": "adam",
           "num_steps": 3, "num_runs": 1, "win_fraction": 1.0, "speedup_median": 1.0,
           "speedup_iqm": 1.0, "final_loss_ratio_median": 0.5, "diverged_runs": 0}
  result = runner.FamilyResult(entries=[entry], steps=np.arange(4), learned_mean=np.ones(4),
                               tuned_mean={"adam": np.ones(4)},
                               learned_curves=np.ones((1, 1, 4)), samples=samples)
  opt = suites.Optimizer("o", None, None, {})
  wandb_log.log(str(tmp_path), "offline", [(opt, [result])], [entry], {"command": "x"})
  items, files_dir = wandb_history(str(tmp_path))
  assert items["samples/o/diffusion_toy2d/_type"] == "image-file"
  assert os.path.getsize(os.path.join(files_dir, items["samples/o/diffusion_toy2d/path"])) > 1000
  assert glob.glob(str(tmp_path / "samples_diffusion_toy2d_*.png"))
