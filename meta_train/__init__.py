"""meta_train: unrolls, gradient estimators, the outer trainer, runs, logging and the CLI."""
