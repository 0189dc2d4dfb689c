# Benchmarks as workflow outputs (results/bench/*.csv), read by REPORT.md's "Kernel and optimizer performance"
# and "Predicted GPU speed" sections and the gpu_scaling figure. Settings: pipelines/config.yaml `bench`.
#
# Timing jobs run alone. Locally they reserve every core Snakemake was given (bench_threads): Snakemake then
# starts no other job beside them, so no training run or memory trace competes for the cores or the memory
# bandwidth the copy roofline measures. It costs their wall time (~2 minutes on 2 cores) once, serially; ratios
# alone would survive a neighbour (each is formed within one interleaved run), but the GB/s and
# fraction-of-copy columns would not. On a cluster each asks for a node of its own (`--exclusive` in
# pipelines/profiles/slurm). The timed process itself uses `bench.threads` torch threads (1, the training runs'
# setting); every CSV row records that, the cores the job was given (`job_cores`) and the machine's
# (`cpu_count`). Processes outside the workflow are not controlled.


rule bench_fp8_linear:
    output:
        BENCH_FP8_CSV,
    log:
        f"{RESULTS}/logs/bench_fp8_linear.log",
    conda:
        CPU_ENV
    threads: bench_threads
    resources:
        mem_mb=JOBS["bench"]["mem_mb"],
        runtime=JOBS["bench"]["runtime"],
    params:
        rounds=BENCH["fp8_rounds"],
        torch_threads=BENCH["threads"],
    shell:
        "python -m benchmarks.fp8_bench --rounds {params.rounds} --threads {params.torch_threads} "
        "--job-cores {threads} --csv {output:q} > {log:q} 2>&1"


rule bench_optim:
    output:
        BENCH_OPTIM_CSV,
    log:
        f"{RESULTS}/logs/bench_optim.log",
    conda:
        CPU_ENV
    threads: bench_threads
    resources:
        mem_mb=JOBS["bench"]["mem_mb"],
        runtime=JOBS["bench"]["runtime"],
    params:
        shapes=" ".join(BENCH["optim_shapes"]),
        optimizers=" ".join(BENCH["optim_optimizers"]),
        steps=BENCH["optim_steps"],
        warmup=BENCH["optim_warmup"],
        torch_threads=BENCH["threads"],
    shell:
        "python -m benchmarks.optim_bench --shapes {params.shapes} --optimizers {params.optimizers} "
        "--steps {params.steps} --warmup {params.warmup} --threads {params.torch_threads} --job-cores {threads} "
        "--csv {output:q} > {log:q} 2>&1"


# Arithmetic only (benchmarks/gpu_cost.py): the predicted FP8 speedup on a GPU, its inputs, and the anchors.
rule gpu_predicted:
    output:
        predicted=GPU_PREDICTED_CSV,
        inputs=GPU_INPUTS_CSV,
        anchors=GPU_ANCHORS_CSV,
    log:
        f"{RESULTS}/logs/gpu_predicted.log",
    conda:
        CPU_ENV
    params:
        device=BENCH["gpu_device"],
        models=" ".join(BENCH["gpu_models"]),
        seqs=" ".join(str(s) for s in BENCH["gpu_seq_lens"]),
        micro_batch=BENCH["gpu_micro_batch"],
    shell:
        "python -m benchmarks.gpu_cost --device {params.device} --models {params.models} --seq-lens {params.seqs} "
        "--micro-batch {params.micro_batch} --csv {output.predicted:q} --inputs-csv {output.inputs:q} "
        "--anchors-csv {output.anchors:q} > {log:q} 2>&1"
