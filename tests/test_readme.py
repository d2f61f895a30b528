"""The README's example must run as written and train."""

import pathlib
import re
import subprocess

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_example_trains_a_flax_model():
  text = README.read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert blocks, "README.md has no python example"
  namespace: dict = {}
  exec(compile(blocks[0], str(README), "exec"), namespace)  # pylint: disable=exec-used
  x = jax.random.normal(jax.random.key(1), (32, 4))
  y = x.sum(-1, keepdims=True)
  step = namespace["train_step"]
  num_steps = namespace["num_steps"]  # the run length the example gives the optimizer
  losses = [float(step(namespace["model"], namespace["optimizer"], x, y))
            for _ in range(num_steps)]
  assert losses[-1] < 0.8 * losses[0]


def _venv_lines(text, word):
  return [l for l in text.splitlines() if l.startswith("python3 -m venv .venv") and word in l]


def test_readme_commands_match_ci():
  """CI runs exactly the README's test command: .ci/run's own extraction, run here, finds it."""
  text = README.read_text()
  ci = (ROOT / ".ci" / "run").read_text()
  test_cmd, main_cmd = _venv_lines(text, "pytest"), _venv_lines(text, "meta-train")
  assert len(test_cmd) == 1 and len(main_cmd) == 1
  # The line of .ci/run that picks the command, executed as CI executes it.
  m = re.search(r'^cmd="\$\((.*)\)"$', ci, re.M)
  assert m, ".ci/run no longer reads its command from README.md"
  extracted = subprocess.run(["bash", "-c", m.group(1)], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.rstrip("\n")
  assert extracted == test_cmd[0]
  # ... and .ci/run runs what it extracted, after a fresh virtual environment.
  run_lines = [l.strip() for l in ci.splitlines() if not l.lstrip().startswith("#")]
  assert run_lines[-1] == 'bash -c "$cmd"'
  assert "rm -rf .venv" in run_lines
  # The command tests what the README says CI tests: the dev and torch extras (torch pinned to
  # the release whose CPU build the CI machines install), tests/ and notebooks/.
  assert 'pip install -e ".[dev,torch]" torch==2.13.0 &&' in extracted
  assert extracted.split("pytest", 1)[1].split()[-2:] == ["tests", "notebooks"]
  # The main command installs the training extras and runs a preset that exists.
  from meta_train import config  # pylint: disable=import-outside-toplevel
  preset = main_cmd[0].split("--preset", 1)[1].split()[0]
  assert 'pip install -e ".[train]"' in main_cmd[0] and preset in config.PRESETS
