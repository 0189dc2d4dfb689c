"""``train.compile``: a method's model under ``torch.compile`` (Inductor), with eager as the fallback.

``Method.build`` calls :func:`compile_trainee` when ``RunContext.compile`` is on (the gpu profile). The
model is compiled in place (``nn.Module.compile``: parameter names, state dicts and checkpoints stay those
of the plain model); its backward is compiled with it by AOTAutograd. The optimizer step is not: those
that fuse their step compile it themselves (``methods.fp8.optim_fused``, torchao's low-bit AdamW).

Compilation is lazy: Dynamo traces, and Inductor builds C++ (CPU) or Triton (GPU) code, at the first
call of each new shape or mode (train, eval), and a failure surfaces there, as an exception from that
call, possibly from the backward. So the trainee's own ``train_step`` and ``eval_loss`` (whichever class
defines them) are wrapped: where a compiled call raises, the model goes back to eager, the reason is kept
in ``trainee.compile_status`` (``"fallback: <exception>: <first line>"``), and the same call is made
again eagerly. A step can be repeated safely: it zeroes the gradients first and the optimizer only steps
after a finished backward; what a failed forward may have left (e.g. an FP8 amax-history entry of a
delayed-scaling recipe) stays. If the eager call fails too, that error is the method's, not the
compiler's, and it propagates as any other failure of the run.

``compile_graphs`` and ``compile_graph_breaks`` count what Dynamo did during this trainee's calls: a
method whose code Dynamo cannot trace as one graph (a graph break) still runs correctly, the untraceable
part eagerly, and the counts say how much of it was compiled.
"""

from __future__ import annotations

import functools

#: ``Trainee.compile_status`` values; a fallback is ``FALLBACK + reason``
OFF, COMPILED, FALLBACK = "off", "compiled", "fallback: "


def _dynamo_counts() -> tuple[int, int]:
    """(graph breaks, graphs compiled) so far in this process (Dynamo's own counters)."""
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values()), int(counters["stats"]["unique_graphs"])


def _reason(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else '(no message)'}"[:300]


def compile_trainee(trainee) -> None:
    """Compile ``trainee.model`` in place and guard the trainee's train and eval calls (module docstring)."""
    try:
        trainee.model.compile()
    except Exception as e:  # noqa: BLE001 - e.g. torch.compile unavailable on this platform
        fall_back(trainee, e)
        return
    trainee.compile_status = COMPILED
    for name in ("train_step", "eval_loss"):
        # bound methods of the trainee's own class: subclasses that own the step are guarded alike
        setattr(trainee, name, _guarded(trainee, getattr(trainee, name)))


def fall_back(trainee, e: BaseException) -> None:
    """Run ``trainee.model`` eagerly from now on, recording why."""
    # the inverse of nn.Module.compile (torch 2.13 keeps the compiled callable in this attribute)
    trainee.model._compiled_call_impl = None
    trainee.compile_status = FALLBACK + _reason(e)


def _guarded(trainee, fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        if trainee.compile_status != COMPILED:
            return fn(*args, **kwargs)
        breaks0, graphs0 = _dynamo_counts()
        try:
            out = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - compiled failed; eager decides whose failure it is
            fall_back(trainee, e)
            return fn(*args, **kwargs)
        breaks1, graphs1 = _dynamo_counts()
        trainee.compile_graphs += graphs1 - graphs0
        trainee.compile_graph_breaks += breaks1 - breaks0
        return out

    return call
