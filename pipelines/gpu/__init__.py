"""GPU reference runs (one prepared script, about 10 minutes on one GPU)."""
