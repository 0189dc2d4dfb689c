"""What the workflow (``pipelines/``) and the benchmarks (``benchmarks/``) both need, below both: atomic
writes (``common.atomic``) and the environment a result was measured in (``common.environment``)."""
