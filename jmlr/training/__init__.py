"""Training: the JMLR objective as pure functions (objective.py, token_losses.py) and the loop
that drives it."""
