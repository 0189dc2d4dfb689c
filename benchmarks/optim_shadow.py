"""Shadow comparison of FP8 moment formats on real gradients, free of trajectory noise.

    python -m benchmarks.optim_shadow --steps 300 --seed 0 --out results/ablation/fp8_optim/shadow.json

A reference run (``bf16-amp``, the cpu profile's data and hyperparameters) trains the tiny model. At
every step, after clipping, its gradients are also fed to "shadow" optimizers that each keep their own
Adam state: an fp32-state AdamW (exact) and FP8AdamW in each variant. Every shadow starts the step from
the reference's current weights (fp32, no rounding of the weights), so the only difference between a
variant's update and the exact one is how its moments were stored over the run so far. Reported per
variant: relative update error ``||d_var - d_exact|| / ||d_exact||`` (mean and max over steps, after
warm-up), the fraction of values whose v is stored as zero while m is not, and the largest
|m| / (sqrt(v) + eps). Loss differences between separate training runs mix this error with seed noise;
this measures the error alone.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

VARIANTS = {
    "v E4M3, plain": dict(v_transform="none"),
    "v E5M2, plain": dict(v_format="e5m2", v_transform="none"),
    "v E4M3, sqrt": dict(v_transform="sqrt"),
    "v E5M2, sqrt": dict(v_format="e5m2", v_transform="sqrt"),
    "v E4M3, DRE": dict(v_transform="dre"),
    "m and v E4M3, DRE (COAT)": dict(m_transform="dre", v_transform="dre"),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.optim_shadow", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the error statistics")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from methods import HParams, RunContext, get_method
    from methods.fp8.adamw import FP8AdamW
    from methods.fp8.adamw_base import AdamW
    from models import build_model, get_model_config
    from pipelines.run import config as config_mod
    from pipelines.run.data import Batches, Corpus, prepare
    from pipelines.run.train import lr_at

    rc = config_mod.resolve_run(config_mod.load(), "cpu", args.model, "bf16-amp", args.seed, {"steps": args.steps})
    train = rc["train"]
    corpus = Corpus.open(prepare(rc["data"], rc["data"]["dir"]))
    cfg = get_model_config(args.model).with_vocab(corpus.vocab_size)
    hp = HParams.from_train(train)
    ref = get_method("bf16-amp").build(build_model(cfg, args.seed), hp, RunContext(torch.device("cpu"), args.seed))
    batches = Batches(corpus, train["batch_size"], train["seq_len"], train["data_seed"])

    def shadow_params():
        return [torch.nn.Parameter(p.detach().clone()) for p in ref.model.parameters()]

    kw = dict(lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps)
    names = [n for n, _ in ref.model.named_parameters()]
    shadows = {}
    for label, opts in {"exact (fp32 m, v)": None, **VARIANTS}.items():
        ps = shadow_params()
        groups = [
            {"params": [p for p in ps if p.dim() >= 2], "weight_decay": hp.weight_decay},
            {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0},
        ]
        opt = (
            AdamW(groups, **kw)
            if opts is None
            else FP8AdamW(groups, impl="torch", stochastic_rounding=False, **kw, **opts)
        )
        shadows[label] = (ps, opt)
    errors = {label: [] for label in VARIANTS}
    t0 = time.time()
    for step in range(args.steps):
        x, y = batches.get(step)
        lr = lr_at(step, train)
        # the reference step, with its gradients kept for the shadows (clipped, as the step used them)
        ref.optimizer.zero_grad(set_to_none=True)
        ref.set_lr(lr)
        ref.model.train()
        loss = ref.forward_loss(x, y)
        loss.backward()
        from methods.base import clip_grads

        clip_grads(ref.params, hp.grad_clip)
        before = [p.detach().clone() for p in ref.model.parameters()]
        grads = [p.grad.detach().clone() for p in ref.model.parameters()]
        ref.optimizer.step()
        deltas = {}
        for label, (ps, opt) in shadows.items():
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.no_grad():
                for p, b, g in zip(ps, before, grads):
                    p.copy_(b)
                    p.grad = g
            opt.step()
            deltas[label] = [p.detach() - b for p, b in zip(ps, before)]
        exact = deltas["exact (fp32 m, v)"]
        den = math.sqrt(sum(float((d.double() ** 2).sum()) for d in exact))
        for label in VARIANTS:
            num = math.sqrt(sum(float(((d - e).double() ** 2).sum()) for d, e in zip(deltas[label], exact)))
            errors[label].append(num / den)
        if step % 50 == 0:
            print(
                f"step {step} loss {float(loss):.3f} "
                + " ".join(f"{k.split(',')[0][-4:]}{k.split(',')[-1]}={v[-1]:.3f}" for k, v in errors.items())
                + f" ({time.time() - t0:.0f} s)",
                file=sys.stderr,
            )
    out = {"steps": args.steps, "seed": args.seed, "model": args.model, "warmup": args.warmup, "variants": {}}
    for label in VARIANTS:
        ps, opt = shadows[label]
        e = errors[label][args.warmup :]
        stats = [opt.state_stats(p) for p in ps]
        worst = max(range(len(ps)), key=lambda i: stats[i]["v_flush_frac"])
        out["variants"][label] = {
            "options": VARIANTS[label],
            "rel_update_err_mean": statistics.fmean(e),
            "rel_update_err_max": max(e),
            "rel_update_err_last50": statistics.fmean(errors[label][-50:]),
            "v_flush_frac_total": sum(s["v_flush_frac"] * p.numel() for s, p in zip(stats, ps))
            / sum(p.numel() for p in ps),
            "v_flush_frac_worst_tensor": stats[worst]["v_flush_frac"],
            "worst_tensor": names[worst],
            "max_m_over_sqrt_v": max(s["max_m_over_sqrt_v"] for s in stats),
            "optim_bytes_per_param": sum(t.numel() * t.element_size() for p in ps for t in opt.state[p].values())
            / sum(p.numel() for p in ps),
        }
    print(json.dumps(out, indent=2))
    if args.out:
        from common.atomic import write_json  # a reader never sees half a file

        write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
