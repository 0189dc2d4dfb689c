# Data preparation and one rule per training run.


rule prepare_data:
    output:
        meta=f"{DATA_DIR}/meta.json",
        tokenizer=f"{DATA_DIR}/tokenizer.json",
        train=f"{DATA_DIR}/train.bin",
        val=f"{DATA_DIR}/val.bin",
    log:
        f"{DATA_DIR}.log",
    conda:
        CPU_ENV
    threads: 1
    resources:
        mem_mb=JOBS["prepare_data"]["mem_mb"],
        runtime=JOBS["prepare_data"]["runtime"],
    params:
        data=DATA_JSON,
    shell:
        'python -m pipelines.run.data --out "$(dirname {output.meta:q})" --settings {params.data:q} > {log:q} 2>&1'


rule run_config:
    output:
        f"{RUN_DIR}/config.json",
    log:
        f"{RUN_DIR}/config.log",
    conda:
        CPU_ENV
    params:
        # Resolved when the DAG is built (a change to it reruns the run); the job only writes it, with a
        # stdlib-only writer: a `run:` block makes Snakemake parse the whole workflow again per job
        # (~10 s each, minutes for a profile of 30 runs).
        cfg=lambda wildcards: json.dumps(run_config(wildcards), sort_keys=True),
    shell:
        "python -m common.atomic {output:q} {params.cfg:q} > {log:q} 2>&1"


rule train:
    input:
        cfg=f"{RUN_DIR}/config.json",
        data=f"{DATA_DIR}/meta.json",
    # One output, written last and atomically (after metrics.jsonl is renamed into place): its presence
    # means the run is complete. A killed run leaves no output, so rerunning the workflow reruns it,
    # and the training command resumes from the run's last checkpoint.
    output:
        summary=f"{RUN_DIR}/summary.json",
    log:
        f"{RUN_DIR}/train.log",
    conda:
        TRAIN_ENV
    # What one run asks for (pipelines/rules/common.smk): cores and GPUs per machine it runs on, host memory
    # per node, the profile's runtime; a run over several nodes is one task per node, started by the training
    # command itself inside the job (`mpi`: no `srun -n1` around it).
    threads: run_threads
    resources:
        gpu=run_gpus,
        gres=run_gres,
        nodes=run_nodes,
        tasks=run_tasks,
        mpi=run_mpi,
        tasks_per_gpu=run_tasks_per_gpu,
        mem_mb=run_mem_mb,
        runtime=JOBS["train"]["runtime"],
    # pipelines.run.launch.devices: locally the run claims GPUs of its own and sees only those
    # (CUDA_VISIBLE_DEVICES); under SLURM the scheduler's assignment stands. The log is appended to, not
    # truncated: a second writer of the run folder (refused by pipelines.run.dirlock) must not wipe the running
    # one's log, and a resumed run's log keeps what the killed attempt said (each attempt begins with a line
    # naming its pid and time).
    shell:
        "python -m pipelines.run.launch.devices {resources.gpu} -- "
        'python -m pipelines.train --config {input.cfg:q} --out "$(dirname {output.summary:q})" --threads {threads} '
        ">> {log:q} 2>&1"
