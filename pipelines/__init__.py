"""The workflow, by stage: ``run/`` (config, data, the one training loop, checkpoints, launch), ``analysis/``
(runs to tables and verdicts), ``report/`` (tables to REPORT.md, figures, the HTML report); the Snakemake rules
in ``rules/``, the experiment in ``config.yaml``. ``pipelines/README.md`` maps every output to its rule and module."""
