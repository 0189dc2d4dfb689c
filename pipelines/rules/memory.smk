# Memory of a real training step at full size, traced on the CPU (methods/memory_trace.py). No training
# run depends on it; its jobs are the workflow's longest (minutes per model), so they start first and the
# short training runs fill the other core around them instead of leaving a long tail at the end. On a
# cluster each is a job of one core (jobs.trace_memory: memory, runtime).


rule trace_memory:
    output:
        f"{RESULTS}/memory_traced/{{model}}.csv",
    log:
        f"{RESULTS}/logs/trace_memory_{{model}}.log",
    priority: 50
    conda:
        CPU_ENV
    threads: 1
    resources:
        mem_mb=JOBS["trace_memory"]["mem_mb"],
        runtime=JOBS["trace_memory"]["runtime"],
    params:
        seqs=TRACE_SEQ_ARG,
        methods=TRACE_METHODS_ARG,
        variants=TRACE_VARIANTS_JSON,
    shell:
        "python -m pipelines.analysis.memory_traced trace --model {wildcards.model} --seq-len {params.seqs} "
        "{params.methods} --variants {params.variants:q} --out {output:q} > {log:q} 2>&1"


# The multi-rank methods, one rank of TRACE_RANKS in a fake process group: FSDP2, ZeRO-2/3 through their
# FSDP2 stand-ins, DeepSpeed's analytic estimate beside them.
rule trace_memory_ranks:
    output:
        f"{RESULTS}/memory_traced_ranks/{{model}}.csv",
    log:
        f"{RESULTS}/logs/trace_memory_ranks_{{model}}.log",
    priority: 50
    conda:
        CPU_ENV
    threads: 1
    resources:
        mem_mb=JOBS["trace_memory"]["mem_mb"],
        runtime=JOBS["trace_memory"]["runtime"],
    params:
        seqs=TRACE_SEQ_ARG,
        ranks=TRACE_RANKS,
        methods=TRACE_METHODS_ARG,
    shell:
        "python -m pipelines.analysis.memory_traced trace --model {wildcards.model} --seq-len {params.seqs} "
        "--ranks {params.ranks} {params.methods} --out {output:q} > {log:q} 2>&1"
