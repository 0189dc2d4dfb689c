# Memory of a real training step at full size, traced on the CPU (methods/memory_trace.py). No training
# run depends on it; its jobs are the workflow's longest (minutes per model), so they start first and the
# short training runs fill the other core around them instead of leaving a long tail at the end.


rule trace_memory:
    priority: 50
    output:
        f"{RESULTS}/memory_traced/{{model}}.csv",
    params:
        seqs=TRACE_SEQ_ARG,
        methods=TRACE_METHODS_ARG,
    conda:
        "../environment.yml"
    log:
        f"{RESULTS}/logs/trace_memory_{{model}}.log",
    shell:
        "python -m pipelines.memory_traced trace --model {wildcards.model} --seq-len {params.seqs} "
        "{params.methods} --out {output:q} > {log:q} 2>&1"


rule memory_traced:
    input:
        TRACE_PART_CSVS,
    output:
        traced=MEMORY_TRACED_CSV,
        fit=MEMORY_FIT_CSV,
    params:
        settings=MEMORY_TRACE_JSON,
    conda:
        "../environment.yml"
    log:
        f"{RESULTS}/logs/memory_traced.log",
    shell:
        "python -m pipelines.memory_traced merge --out {output.traced:q} --fit {output.fit:q} "
        "--settings {params.settings:q} {input:q} > {log:q} 2>&1"
