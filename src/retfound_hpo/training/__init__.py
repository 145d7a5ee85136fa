"""Training: the one fit loop (HPO trials and train-best), inputs, optimiser, devices."""
