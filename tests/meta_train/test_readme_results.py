"""The README's results table equals what meta_train.readme_results writes from reports/."""

import json
import pathlib

import numpy as np
import pytest

from meta_train import readme_results as rr

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_table_equals_the_generated_one():
  files = rr.report_files(str(ROOT))
  assert files, "no committed meta-eval reports under reports/"
  text = (ROOT / "README.md").read_text()
  assert rr.section(text) == rr.table(files, str(ROOT))


def _entry(opt, suite, family, baseline, learned, base, speed, **extra):
  return {"optimizer": opt, "suite": suite, "family": family, "baseline": baseline,
          "num_steps": 10, "num_tasks": len(learned), "num_runs": int(np.size(learned)),
          "final_loss_learned": learned, "final_loss_baseline": base,
          "speedup_per_run": speed, "speedup_cap": 4.0, "diverged_runs": 1, **extra}


def test_pooling_over_families_by_hand(tmp_path):
  results = [_entry("o", "out_of_distribution", "a", "adam", [[1.0, 3.0]], [[2.0, 2.0]],
                    [[0.5, 4.0]], speedup_unreached_runs=1),
             _entry("o", "out_of_distribution", "b", "adam", [[1.0, 1.0]], [[2.0, 0.5]],
                    [[1.0, 2.0]])]
  (row,) = rr.pooled_rows(results)
  assert row["runs"] == 4 and row["families"] == ["a", "b"]
  assert row["win_fraction"] == 0.5  # 1<2, 3>2, 1<2, 1>0.5
  assert row["speedup_median"] == 1.5  # median of 0.5, 4, 1, 2
  assert row["final_loss_ratio_median"] == pytest.approx(1.0)  # ratios 0.5, 1.5, 0.5, 2
  assert row["diverged_runs"] == 2 and row["speedup_unreached_runs"] == 1
  f = tmp_path / "r" / "s" / "eval.json"
  f.parent.mkdir(parents=True)
  f.write_text(json.dumps({"results": results}))
  text = rr.table(["r/s/eval.json"], str(tmp_path))
  assert "| `o` | out_of_distribution | tuned `adam` | `a`, `b` | 10 | 4 | 50%" in text
  readme = tmp_path / "README.md"
  readme.write_text("# x\n\n" + rr.BEGIN + "\nold\n" + rr.END + "\n\nmore\n")
  readme.write_text(rr.replace_section(readme.read_text(), text))
  assert rr.section(readme.read_text()) == text and readme.read_text().endswith("\n\nmore\n")


def test_a_ratio_whose_sides_both_diverged_is_inf_not_nan():
  nan, inf = float("nan"), float("inf")
  results = [_entry("o", "in_distribution", "a", "adam", [[nan, inf, inf]], [[nan, inf, 1.0]],
                    [[4.0, 4.0, 4.0]])]
  (row,) = rr.pooled_rows(results)
  assert row["final_loss_ratio_median"] == inf  # nan / nan and inf / inf count as losses


def test_calibration_rows_follow_their_learned_optimizer_and_speedups_print_censoring():
  learned = _entry("o", "in_distribution", "a", "adam", [[1.0]], [[2.0]], [[4.0]],
                   role="learned", speedup_unreached_runs=0)
  calib = _entry("tuned adam", "in_distribution", "a", "adam", [[2.0]], [[2.0]], [[4.0]],
                 role="calibration", reference="o", speedup_unreached_runs=1)
  del calib["final_loss_baseline"]
  rows = rr.pooled_rows([calib, learned])
  assert [r["optimizer"] for r in rows] == ["o", "tuned adam"]
  assert rows[1]["win_fraction"] is None
  text = rr.table_from_results([calib, learned], ["x"])
  lines = [l for l in text.splitlines() if l.startswith("| `o`") or l.startswith("| ↳")]
  assert "4.00x" in lines[0] and "≥ 4x" not in lines[0]   # reached exactly at the cap
  assert "≥ 4x" in lines[1]                                # never reached


def test_recipe_experiments_and_dev_draws_stay_out_of_the_readme_table(tmp_path):
  report = json.dumps({"results": [{"draws": "report"}]})
  for rel, text in (("reports/default/in_distribution", report),
                    ("reports/experiments/variant_a", report),
                    ("reports/quickstart/in_distribution", json.dumps(
                        {"results": [{"draws": "dev"}]})),
                    ("reports/diffusion/in_distribution", json.dumps({"results": [{}]}))):
    (tmp_path / rel).mkdir(parents=True)
    (tmp_path / rel / "eval.json").write_text(text)
  assert rr.report_files(str(tmp_path)) == ["reports/default/in_distribution/eval.json"]
