"""Meta-gradient estimators: the protocol, TBPTT, truncated ES, PES, full-horizon ES, groups.

One module per estimator, as learned_optimization's ``outer_trainers/``:
:mod:`~meta_train.estimators.estimator` (the protocol, the shared fields, ``combine``),
:mod:`~meta_train.estimators.antithetic` (what the antithetic ones share),
:mod:`~meta_train.estimators.tbptt`, :mod:`~meta_train.estimators.truncated_es`,
:mod:`~meta_train.estimators.pes`, :mod:`~meta_train.estimators.full_es`,
:mod:`~meta_train.estimators.registry` (the estimators by name) and
:mod:`~meta_train.estimators.grouped` (one group per member of a mixture).
"""
