"""One training run: the experiment config and its checks, the corpus, the one training loop, checkpoints,
the event log and the launch of multi-rank runs. Imports neither the analysis nor the report."""
