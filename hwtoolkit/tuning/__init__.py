"""Hyperparameter tuning: an Optuna study on a database, every trial an ordinary run directory.

``hwtoolkit tune CONFIG --search KEY=SPACE ... --trials N`` samples the searched fields (``space`` reads the
spaces), trains each trial with the config's own epochs and reports its validation accuracy per epoch to a pruner
(``study``). Selection uses validation accuracy only; the best trial's config is written as ``best.toml`` and its
test accuracy, measured once by its own run, is the only test figure reported.
"""

from .space import SearchSpace, TuneError, parse_search
from .study import run_tune

__all__ = ["SearchSpace", "TuneError", "parse_search", "run_tune"]
