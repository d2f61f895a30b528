"""The README's example must run as written and train."""

import pathlib
import re

import jax

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_trains_a_flax_model():
  text = README.read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert blocks, "README.md has no python example"
  namespace: dict = {}
  exec(compile(blocks[0], str(README), "exec"), namespace)  # pylint: disable=exec-used
  x = jax.random.normal(jax.random.key(1), (32, 4))
  y = x.sum(-1, keepdims=True)
  step = namespace["train_step"]
  losses = [float(step(namespace["model"], namespace["optimizer"], x, y)) for _ in range(60)]
  assert losses[-1] < 0.8 * losses[0]


def test_readme_commands_match_ci():
  text = README.read_text()
  ci = (README.parent / ".ci" / "run").read_text()
  test_cmd = [l for l in text.splitlines() if l.startswith("python3 -m venv .venv") and "pytest" in l]
  main_cmd = [l for l in text.splitlines() if l.startswith("python3 -m venv .venv") and "meta-train" in l]
  assert len(test_cmd) == 1 and len(main_cmd) == 1
  assert "grep -E '^python3 -m venv .venv .*pytest' README.md" in ci
