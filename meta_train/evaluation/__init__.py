"""Evaluation of learned optimizers against the tuned Adam baselines users run (``meta-eval``).

Modules: :mod:`~meta_train.evaluation.config` (the one :class:`EvalConfig`), ``measures``
(numbers from curves), ``curves`` (jitted training programs), ``cache`` (baseline curves on
disk), ``baselines`` (tuned grids), ``compare`` (learned vs a baseline), ``suites`` (named
suites from an optimizer file's provenance), ``runner`` (families and suites), ``report``
(eval.json / eval.md / tables), ``figures``, ``wandb_log`` and ``cli`` (``meta-eval``).
"""

from meta_train.evaluation.config import (BASELINES, COSINE_LENGTH_FACTORS,
                                          DEFAULT_LEARNING_RATES, MAX_SPEEDUP, SUITES,
                                          EvalConfig)

__all__ = ["BASELINES", "COSINE_LENGTH_FACTORS", "DEFAULT_LEARNING_RATES", "MAX_SPEEDUP",
           "SUITES", "EvalConfig"]
