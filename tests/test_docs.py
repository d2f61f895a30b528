"""docs/architecture.md is the repository's design page: docstrings cite it, and it cites only
modules and names that exist."""

from __future__ import annotations

import importlib
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("learned_opt", "tasks", "meta_train")
SOURCES = sorted(p.relative_to(ROOT).as_posix() for pkg in PACKAGES
                 for p in (ROOT / pkg).rglob("*.py"))

# `learned_opt/mlp.py`, `tasks/diffusion/`, `tests/learned_opt/test_conformance.py`, ...
_PATH = re.compile(r"(?<![\w./])((?:learned_opt|tasks|meta_train|tests|benchmarks|notebooks|docs)"
                   r"/[\w/.-]*)")
# `meta_train.unroll.unroll`, `learned_opt.base.LearnedOptimizer.init`, ... inside backticks.
_DOTTED = re.compile(r"`((?:learned_opt|tasks|meta_train)(?:\.\w+)+)(?:\([^`]*\))?`")


def _text() -> str:
  return DOC.read_text(encoding="utf-8")


def _resolve(dotted: str):
  """Imports the longest module prefix of ``dotted`` and looks the rest up as attributes."""
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:i]))
    except ModuleNotFoundError:
      continue
    for name in parts[i:]:
      obj = getattr(obj, name)
    return obj
  raise ModuleNotFoundError(dotted)


def test_no_source_cites_a_design_file_outside_the_repository():
  assert len(SOURCES) > 30
  citing = [p for p in SOURCES if "DESIGN.md" in (ROOT / p).read_text(encoding="utf-8")]
  assert not citing, f"{citing} cite DESIGN.md, which is not in the repository: cite " \
                     "docs/architecture.md"


def test_docstrings_point_to_the_architecture_page():
  for path in ("learned_opt/base.py", "tasks/base.py"):
    assert "docs/architecture.md" in (ROOT / path).read_text(encoding="utf-8"), path


def test_every_path_cited_exists():
  paths = sorted(set(m.rstrip(".,") for m in _PATH.findall(_text())))
  assert "learned_opt/features.py" in paths and "meta_train/unroll.py" in paths
  missing = [p for p in paths if not (ROOT / p).exists()]
  assert not missing, f"docs/architecture.md cites paths that do not exist: {missing}"


def test_every_dotted_name_cited_resolves():
  names = sorted(set(_DOTTED.findall(_text())))
  assert "meta_train.unroll.unroll" in names and "learned_opt.serialization.save" in names
  missing = []
  for name in names:
    try:
      _resolve(name)
    except (ImportError, AttributeError):
      missing.append(name)
  assert not missing, f"docs/architecture.md names what does not exist: {missing}"


# The import graph (layers one way, no cycle) is checked by tests/test_imports.py.


FINDINGS = ROOT / "docs" / "findings.md"
LOG = ROOT / "reports" / "experiments" / "LOG.md"
_REPORT = re.compile(r"`((?:reports|docs)/[\w/.-]+)`")


def test_findings_cite_reports_and_rows_that_exist():
  text = FINDINGS.read_text(encoding="utf-8")
  cited = sorted(set(_REPORT.findall(text)))
  assert "reports/default/long_horizon" in cited and "reports/experiments/LOG.md" in cited
  missing = [p for p in cited if not (ROOT / p).exists()]
  assert not missing, f"docs/findings.md cites reports that do not exist: {missing}"
  log = LOG.read_text(encoding="utf-8")
  rows = set(re.findall(r"#(\d+)", text))
  assert {"13", "30", "48"} <= rows
  absent = sorted((r for r in rows if not re.search(rf"^\| {r}[ab]? \||\*\*#{r}\b", log, re.M)),
                  key=int)  # a table row of the log, or a bold "#N" paragraph
  assert not absent, f"docs/findings.md cites rows missing from the log: {absent}"


def test_docs_cite_no_issue_numbers_and_no_moved_page():
  pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), LOG]
  for page in pages:
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"\bissues? #?\d+", text, re.I), f"{page.name} cites an issue number"
    assert "docs/experiments.md" not in text, f"{page.name} links the moved docs/experiments.md"
