"""``meta-eval`` results in wandb: curves as line series, the results table as a ``wandb.Table``
and, for diffusion families, the learned and tuned-Adam models' samples side by side."""

from __future__ import annotations

import os
from typing import Any, Sequence


TABLE_COLUMNS = ("optimizer", "role", "suite", "family", "baseline", "num_steps", "num_runs",
                 "win_fraction", "win_fraction_test", "speedup_median", "speedup_iqm",
                 "final_loss_ratio_median", "final_loss_ratio_test_median", "diverged_runs")


def log(out_dir: str, mode: str, all_results: Sequence[tuple[Any, Sequence[Any]]],
        entries: Sequence[dict[str, Any]], meta: dict[str, Any], figures_dir: str | None = None,
        project: str = "learned_opt") -> str:
  """Writes one wandb run (``mode``: offline or online) under ``out_dir/wandb``.

  Args:
    out_dir: the report directory.
    mode: ``"offline"`` or ``"online"``.
    all_results: ``[(optimizer, [FamilyResult, ...]), ...]``.
    entries: the results list of ``eval.json``.
    meta: the report's meta dict (the wandb run's config).
    figures_dir: where sample figures are written (default ``out_dir``).
    project: wandb project.

  Returns:
    The wandb run id.
  """
  os.environ.setdefault("WANDB_SILENT", "true")
  import wandb  # pylint: disable=import-outside-toplevel
  from meta_train.evaluation import figures  # pylint: disable=import-outside-toplevel
  from meta_train.evaluation.report import slug  # pylint: disable=import-outside-toplevel
  settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True,
                            save_code=False, disable_job_creation=True)
  run = wandb.init(dir=out_dir, mode=mode, project=project, job_type="meta-eval",
                   config=dict(meta), settings=settings)
  for opt, results in all_results:
    name = slug(opt.label)
    for r in results:
      family = r.entries[0]["family"]
      keys = ["learned"] + [f"tuned {b}" for b in r.tuned_mean]
      ys = [r.learned_mean] + list(r.tuned_mean.values())
      xs = [int(x) for x in r.steps]
      run.log({f"curves/{name}/{family}": wandb.plot.line_series(
          xs=xs, ys=[[float(v) for v in y] for y in ys], keys=keys,
          title=f"{opt.label} on {family}", xname="step")})
      if r.samples is not None:
        path = os.path.join(figures_dir or out_dir, f"samples_{family}_{name}.png")
        figures.samples_figure(r.samples, path, f"{opt.label} vs tuned Adam on {family}")
        run.log({f"samples/{name}/{family}": wandb.Image(path)})
  table = wandb.Table(columns=list(TABLE_COLUMNS),
                      data=[[e.get(c) for c in TABLE_COLUMNS] for e in entries])
  run.log({"results": table})
  for e in entries:
    prefix = f"{e['optimizer']}/{e['suite']}/{e['family']}/{e['baseline']}"
    if e.get("win_fraction") is not None:
      run.summary[f"{prefix}/win_fraction"] = e["win_fraction"]
    run.summary[f"{prefix}/speedup_median"] = e["speedup_median"]
  run_id = run.id
  run.finish()
  return run_id
