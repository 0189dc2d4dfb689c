"""How a run's processes are started: the ranks of a multi-rank run (``ranks``), spread over several nodes
(``nodes``), dying with the run (``lifetime``), and, on a machine of several GPUs, the GPUs a run may use
(``devices``, a command of its own: ``python -m pipelines.run.launch.devices``).

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
    agent_commands,
    exit_code,
    finish_after_ranks,
    free_port,
    in_rank,
    launch,
    launcher_command,
    launcher_name,
    rank_device,
    rank_info,
    rank_started,
    rank_writer,
    ranks_here,
    ranks_to_launch,
    run_nodes,
    writes_config,
)
