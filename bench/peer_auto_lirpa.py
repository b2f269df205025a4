#!/usr/bin/env python3
"""One certified training step in auto_LiRPA, the twin of `bulwark-bench bound-step`.

    L = 0.5 CE(f(x), y) + 0.5 CE([0, -lb], 0),   lb: lower bounds of z_y - z_j (j != y)
    lb by IBP (compute_bounds(IBP=True, method=None)) or CROWN-IBP (method="CROWN-IBP": interval
    bounds for the intermediate layers, CROWN's backward pass for the margins), then backward and
    an SGD step (lr 0.01, momentum 0.9, weight decay 5e-4).

The model is bulwark's (python/bulwark_torch.py, the same layers and names) in train mode, the
input uniform in [0, 1] with labels i mod 10, the box [x - eps, x + eps] clipped to [0, 1]: the
step bench/bound_step.cpp times. Prints one JSON line per model with the median step time.
Needs torch and auto_LiRPA 0.3 (bench/certified_vs_auto_lirpa.sh makes the venv).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import bulwark_torch  # noqa: E402
from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm  # noqa: E402

MNIST_MODELS = {"mlp", "wong_small", "wong_large", "ibp_small", "ibp_large"}


def shape_of(name):
    if name in MNIST_MODELS:
        return 1, 28, [0.1307], [0.3081], 0.3
    return 3, 32, [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616], 8 / 255


def margin_specification(labels, classes):
    """[N, K - 1, K]: rows e_y - e_j for j != y (auto_LiRPA's examples' C)."""
    eye = torch.eye(classes)
    c = eye[labels].unsqueeze(1) - eye.unsqueeze(0)
    keep = labels.unsqueeze(1) != torch.arange(classes).unsqueeze(0)
    return c[keep].view(labels.numel(), classes - 1, classes)


def time_step(name, bound, batch, warmup, iters, eps_arg):
    channels, side, mean, std, eps = shape_of(name)
    eps = eps if eps_arg is None else eps_arg
    config = {"model": name, "input": {"channels": channels, "height": side, "width": side, "num_classes": 10,
                                       "mean": mean, "std": std}}
    torch.manual_seed(0)
    model = bulwark_torch.build_model(config)
    model.train()
    x = torch.rand(batch, channels, side, side)
    y = torch.arange(batch) % 10
    bounded = BoundedModule(model, torch.empty_like(x), bound_opts={"relu": "adaptive"}, device="cpu")
    bounded.train()
    opt = torch.optim.SGD(bounded.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    c = margin_specification(y, 10)
    ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
    times, loss_value = [], 0.0
    for it in range(warmup + iters):
        t0 = time.perf_counter()
        bx = BoundedTensor(x, ptb)
        logits = bounded(bx)
        if bound == "ibp":
            lb, _ = bounded.compute_bounds(IBP=True, C=c, method=None, bound_upper=False)
        else:
            lb, _ = bounded.compute_bounds(IBP=False, C=c, method="CROWN-IBP", bound_upper=False)
        worst = torch.cat([torch.zeros(batch, 1), -lb], dim=1)
        loss = 0.5 * torch.nn.functional.cross_entropy(logits, y) + \
            0.5 * torch.nn.functional.cross_entropy(worst, torch.zeros(batch, dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_value = float(loss)
        if it >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return {"impl": "auto_LiRPA", "model": name, "bound": bound, "batch": batch, "threads": torch.get_num_threads(),
            "eps": eps, "median_ms": statistics.median(times), "min_ms": min(times), "loss": loss_value}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="zoo model (repeatable; default ibp_large and cnn7)")
    ap.add_argument("--bound", choices=["ibp", "crown-ibp"], default="ibp")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--eps", type=float, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.model or ["ibp_large", "cnn7"]:
        print(json.dumps(time_step(name, args.bound, args.batch, args.warmup, args.iters, args.eps)), flush=True)


if __name__ == "__main__":
    main()
