"""A user's own family by import path: ``tasks.get("package.module:function")``."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(autouse=True)
def user_package(monkeypatch):
  """``tests/fixtures`` importable, as a user's package on ``sys.path`` would be."""
  monkeypatch.syspath_prepend(str(FIXTURES))


def test_an_import_path_builds_the_users_family():
  import user_family  # pylint: disable=import-outside-toplevel
  family = tasks.get("user_family:tiny_regression")
  assert isinstance(family, tasks.TaskFamily) and family.name == "tiny_regression"
  # It is the family the function builds: same data, same loss at the same parameters.
  task = family.task(family.sample(jax.random.key(0)))
  params = task.init(jax.random.key(1))
  batch = task.eval_batch("train")
  np.testing.assert_array_equal(batch["x"], user_family.X)
  model_out = jax.vmap(lambda x: _forward(params, x))(jnp.asarray(user_family.X))
  np.testing.assert_allclose(task.loss(params, jax.random.key(2), batch),
                             np.mean((model_out - user_family.Y) ** 2), rtol=1e-5)
  # A dataclass family keeps its fields; each call builds it again.
  quad = tasks.get("user_family:small_quadratics")
  assert isinstance(quad, tasks.QuadraticFamily) and quad.dim == 3
  assert tasks.get("user_family:small_quadratics") == quad


def _forward(params, x):
  """The fixture's TinyMLP written out: ``out(tanh(hidden(x)))``."""
  h = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  return (h @ params["out"]["kernel"] + params["out"]["bias"])[0]


def test_registered_names_still_work_and_are_not_paths():
  assert isinstance(tasks.get("quadratic"), tasks.QuadraticFamily)
  assert not tasks.is_import_path("digits_mlp") and tasks.is_import_path("pkg.mod:fn")
  with pytest.raises(ValueError, match="holds no ':'"):
    tasks.register_family("pkg:fn", tasks.QuadraticFamily)
  assert "pkg:fn" not in tasks.family_names()


@pytest.mark.parametrize("path, message", [
    ("no_such_package.families:make",
     "cannot import module 'no_such_package.families' (No module named 'no_such_package'); is "
     "its package installed or on PYTHONPATH?"),
    ("user_family:missing", "'user_family' has no attribute 'missing'"),
    ("user_family:TinyMLP.missing", "'user_family.TinyMLP' has no attribute 'missing'"),
    ("user_family:NOT_CALLABLE", "'NOT_CALLABLE' is not callable (a int)"),
    ("user_family:not_a_family", "not_a_family() returned a FunctionTask, not a "
                                 "tasks.TaskFamily (wrap a task with tasks.as_family)"),
    ("user_family:broken", "calling broken() raised RuntimeError: the dataset file is missing"),
    ("user_family:", "is not an import path package.module:function"),
    ("user family:make", "is not an import path package.module:function"),
])
def test_a_path_that_gives_no_family_fails_in_one_line_naming_it(path, message):
  with pytest.raises(tasks.FamilyImportError) as info:
    tasks.get(path)
  text = str(info.value)
  assert text.startswith(f"task family {path!r}") and message in text
  assert len(text.splitlines()) == 1
  # Callers that catch an unknown family catch it too.
  assert isinstance(info.value, tasks.UnknownFamilyError)


def test_a_module_that_fails_to_import_is_named(tmp_path, monkeypatch):
  (tmp_path / "fails_on_import.py").write_text("raise OSError('no GPU here\\nsecond line')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(tasks.FamilyImportError) as info:
    tasks.get("fails_on_import:make")
  assert str(info.value) == ("task family 'fails_on_import:make': importing module "
                             "'fails_on_import' raised OSError: no GPU here")
  assert isinstance(info.value.__cause__, OSError)
