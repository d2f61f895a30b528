"""The README's results table equals what meta_train.readme_results writes from reports/."""

import json
import pathlib

import pytest

from meta_train import readme_results as rr

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_table_equals_the_generated_one():
  files = rr.report_files(str(ROOT))
  assert files, "no committed meta-eval reports under reports/"
  text = (ROOT / "README.md").read_text()
  assert rr.section(text) == rr.table(files, str(ROOT))


def _entry(opt, suite, family, baseline, learned, base, speed):
  return {"optimizer": opt, "suite": suite, "family": family, "baseline": baseline,
          "num_steps": 10, "final_loss_learned": learned, "final_loss_baseline": base,
          "speedup_per_run": speed, "speedup_cap": 4.0, "diverged_runs": 1}


def test_pooling_over_families_by_hand(tmp_path):
  results = [_entry("o", "out_of_distribution", "a", "adam", [[1.0, 3.0]], [[2.0, 2.0]],
                    [[0.5, 4.0]]),
             _entry("o", "out_of_distribution", "b", "adam", [[1.0, 1.0]], [[2.0, 0.5]],
                    [[1.0, 2.0]])]
  (row,) = rr.pooled_rows(results)
  assert row["runs"] == 4 and row["families"] == ["a", "b"]
  assert row["win_fraction"] == 0.5  # 1<2, 3>2, 1<2, 1>0.5
  assert row["speedup_median"] == 1.5  # median of 0.5, 4, 1, 2
  assert row["final_loss_ratio_median"] == pytest.approx(1.0)  # ratios 0.5, 1.5, 0.5, 2
  assert row["diverged_runs"] == 2
  f = tmp_path / "r" / "s" / "eval.json"
  f.parent.mkdir(parents=True)
  f.write_text(json.dumps({"results": results}))
  text = rr.table(["r/s/eval.json"], str(tmp_path))
  assert "| `o` | out_of_distribution | tuned `adam` | `a`, `b` | 10 | 4 | 50%" in text
  readme = tmp_path / "README.md"
  readme.write_text("# x\n\n" + rr.BEGIN + "\nold\n" + rr.END + "\n\nmore\n")
  readme.write_text(rr.replace_section(readme.read_text(), text))
  assert rr.section(readme.read_text()) == text and readme.read_text().endswith("\n\nmore\n")


def test_recipe_experiments_stay_out_of_the_readme_table(tmp_path):
  for rel in ("reports/default/in_distribution", "reports/experiments/variant_a"):
    (tmp_path / rel).mkdir(parents=True)
    (tmp_path / rel / "eval.json").write_text("{}")
  assert rr.report_files(str(tmp_path)) == ["reports/default/in_distribution/eval.json"]
