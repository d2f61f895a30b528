"""The import graph of the three packages: imports flow one way and no two modules import
each other (docs/architecture.md, "Layout").

Every module is parsed with ``ast`` (nothing is imported), every ``import`` statement counts,
those inside functions too: a lazy import hides a cycle from the interpreter, not from a reader.
"""

from __future__ import annotations

import ast
import pathlib


ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("learned_opt", "tasks", "meta_train")
# A package may import only the packages listed for it (and itself): learned_opt and tasks
# import neither each other nor meta_train.
ALLOWED = {"learned_opt": set(), "tasks": set(), "meta_train": {"learned_opt", "tasks"}}


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
  """Every module of the three packages by dotted name."""
  return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(name: str, path: pathlib.Path) -> set[str]:
  """The dotted names module ``name`` imports (``from a import b`` gives ``a.b``)."""
  is_package = path.name == "__init__.py"
  out = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
    if isinstance(node, ast.Import):
      out.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the module's own package, up level - 1
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
      out.add(base)
      out.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
  return out


def graph() -> dict[str, set[str]]:
  """Module -> the modules of the three packages it imports (the longest existing prefix)."""
  mods = modules()
  edges = {}
  for name, path in mods.items():
    targets = set()
    for dotted in imported_names(name, path):
      parts = dotted.split(".")
      for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in mods:
          targets.add(".".join(parts[:i]))
          break
    targets.discard(name)
    # `from meta_train.x import y` names the package meta_train.x too; a parent package is
    # not an import of its own modules' code, so edges to a module's ancestors are dropped.
    edges[name] = {t for t in targets if not name.startswith(t + ".")}
  return edges


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
  """The strongly connected components with more than one module (Tarjan's algorithm)."""
  index, low, on_stack, stack, found = {}, {}, set(), [], []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(frozenset(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return found


def test_the_graph_sees_the_imports_it_should():
  edges = graph()
  assert "meta_train.estimators.truncated_es" in edges["meta_train.estimators.full_es"]
  assert "meta_train.unroll" in edges["meta_train.estimators.pes"]
  assert "meta_train.trainer" in edges["meta_train.runtime.run"]  # imported inside a function
  assert "learned_opt.base" in edges["meta_train.unroll"]
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
  assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_flow_one_way():
  """learned_opt and tasks import neither each other nor meta_train."""
  bad = []
  for name, path in modules().items():
    package = name.split(".")[0]
    for dotted in imported_names(name, path):
      top = dotted.split(".")[0]
      if top in PACKAGES and top != package and top not in ALLOWED[package]:
        bad.append(f"{name} imports {dotted}")
  assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycle_between_modules():
  found = [sorted(c) for c in cycles(graph())]
  assert not found, f"import cycles: {found}"


def test_every_module_compiles_without_warnings():
  """An invalid escape in a docstring (``"\\D"`` where ``"\\\\D"`` was meant) is a
  SyntaxWarning today and garbles the maths (``"\\t"`` is a tab); it becomes an error here."""
  import warnings  # pylint: disable=import-outside-toplevel
  bad = []
  for name, path in modules().items():
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      try:
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
      except (SyntaxError, SyntaxWarning) as e:
        bad.append(f"{name}: {e}")
  assert not bad, "\n".join(bad)
