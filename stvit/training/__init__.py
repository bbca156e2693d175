"""The training wing: the run API (request -> plan -> run), stages as data and the one fit loop, the run
directory, the final evaluation, the linear baseline, cross-validation and the hyperparameter search."""
