"""Recipe pieces computed from a task family before meta-training (specialisation).

* :func:`tuned_adam`: the family's tuned constant Adam rate, from a short sweep
  (:mod:`meta_train.recipe.tuned_start`).
"""

from meta_train.recipe.tuned_start import TunedStart, tuned_adam

__all__ = ["TunedStart", "tuned_adam"]
