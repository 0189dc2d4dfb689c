"""GPU reference runs (one prepared script for a briefly lent GPU)."""
