# Memory of a real training step at full size, traced on the CPU (methods/memory_trace.py): no training
# run depends on it, so its jobs fill the cores the runs leave idle.


rule trace_memory:
    output:
        f"{RESULTS}/memory_traced/{{model}}_s{{seq}}.csv",
    wildcard_constraints:
        seq=r"\d+",
    params:
        methods=trace_methods_arg,
    conda:
        "../environment.yml"
    log:
        f"{RESULTS}/logs/trace_memory_{{model}}_s{{seq}}.log",
    shell:
        "python -m pipelines.memory_traced trace --model {wildcards.model} --seq-len {wildcards.seq} "
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
