"""Benchmarks and studies: speed measurements and the searches behind the profiles' settings, run as
``python -m benchmarks.<name>``; each writes under ``results/`` and keeps its record beside it."""
