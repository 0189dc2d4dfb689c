"""How a run's processes are started: the ranks of a multi-rank run (``ranks``) and, on a machine of several
GPUs, the GPUs a run may use (``devices``, a command of its own: ``python -m pipelines.run.launch.devices``).

The public names of ``ranks`` are re-exported here, so ``from pipelines.run import launch`` and
``launch.launch(...)``, ``launch.rank_info()`` ... read as before. ``devices`` is not imported here: it runs as
``python -m`` and is imported by name (``from pipelines.run.launch import devices``) where it is used.
"""
from pipelines.run.launch.ranks import (  # noqa: F401 - re-exported
    ERROR_FILE,
    LAUNCHED,
    LAUNCHER_ARGS_ENV,
    LAUNCHER_ENV,
    LAUNCHERS,
    NullWriter,
    exit_code,
    finish_after_ranks,
    free_port,
    in_rank,
    launch,
    launcher_command,
    rank_device,
    rank_info,
    rank_writer,
    ranks_to_launch,
    writes_config,
)
