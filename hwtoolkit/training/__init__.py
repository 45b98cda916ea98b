"""The learning loop and what it is made of: estimators, optimizer, checkpoints, run directory, evaluation."""
