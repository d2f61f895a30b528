"""Recipe pieces: where meta-training starts and what it changes.

* :func:`tuned_adam`: the family's tuned constant Adam rate, from a short sweep
  (:mod:`meta_train.recipe.tuned_start`).
* :mod:`meta_train.recipe.frozen`: a start from an optimizer file's parts, and parts of a chain
  kept at the file's values (Celo's second phase: a schedule meta-trained on a frozen rule).
"""

from meta_train.recipe.tuned_start import TunedStart, tuned_adam

__all__ = ["TunedStart", "tuned_adam"]
