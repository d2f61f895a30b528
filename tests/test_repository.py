"""What the repository commits: small reports with no path of the machine they were made on."""

import json
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Experiment reports (reports/experiments, one per LOG row: eval.md, and eval.json as compact
# JSON) grow with every round; the shipped reports keep meta-eval's indented JSON (~0.1 MiB per
# report with its figures and optimizer file; 4.5 MiB since the three `specialize` reports, 5 MiB
# since the replaced `default`'s three reports were kept as an experiment). A checkpoint
# committed by mistake, or a run's figures, still breaks this.
REPORTS_BUDGET_BYTES = 5 * 1024 * 1024
# An absolute path on a build machine (a run or cache directory), as reports must not hold.
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:tmp|work|home|root|Users|mnt|scratch)/")


def _tracked(prefix: str) -> list[str]:
  try:
    out = subprocess.run(["git", "ls-files", "-z", prefix], cwd=ROOT, capture_output=True,
                         check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout")
  return [os.path.join(ROOT, p) for p in out.decode().split("\0") if p]


def test_reports_stay_within_their_size_budget():
  files = [f for f in _tracked("reports") if os.path.isfile(f)]
  assert files
  total = sum(os.path.getsize(f) for f in files)
  assert total <= REPORTS_BUDGET_BYTES, f"reports/ holds {total / 2**20:.1f} MiB"


def test_reports_hold_no_machine_paths():
  offenders = []
  for f in _tracked("reports"):
    if f.endswith((".md", ".json")):
      with open(f, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
          if MACHINE_PATH.search(line):
            offenders.append(f"{os.path.relpath(f, ROOT)}:{i}")
  assert not offenders, offenders[:10]


@pytest.mark.parametrize("line,bad", [("--out /tmp/e", True), ("runs/x/optimizer", False),
                                      ("see /work/runs/a", True), ("a/tmp/b", False)])
def test_the_machine_path_pattern(line, bad):
  assert bool(MACHINE_PATH.search(line)) == bad


def test_shipped_optimizer_files_hold_no_machine_paths():
  from learned_opt import file_format  # pylint: disable=import-outside-toplevel
  files = [f for f in _tracked("learned_opt/pretrained") + _tracked("reports")
           if f.endswith(".safetensors")]
  assert len(files) >= 3
  for f in files:
    _, doc = file_format.read_document(f)
    text = json.dumps(doc.get("provenance") or {})
    assert not MACHINE_PATH.search(text), (os.path.relpath(f, ROOT), MACHINE_PATH.search(text))
