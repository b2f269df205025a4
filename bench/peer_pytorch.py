#!/usr/bin/python3
"""The PyTorch peer of `bulwark-bench train-step`: the same adversarial training step, timed.

One step = attack (k x (forward + input-gradient backward) + projected sign step)
         + forward + backward + SGD(momentum 0.9, weight decay 5e-4),
model in train mode throughout, batch of uniform random images and labels i % 10.

Models, exactly as bulwark's zoo builds them (models/zoo.cpp), each after a per-channel
normalisation layer so the attack works in [0, 1] pixel space:
  wong_small  conv16 4x4/2 p1, conv32 4x4/2 p1, FC 100, FC 10 (ReLU between)       MNIST 1x28x28
  cnn7        conv 64, 64, 128/2, 128, 128 (3x3 p1, BatchNorm, ReLU), FC 512 (BatchNorm1d,
              ReLU), FC 10                                                          CIFAR 3x32x32
  preact_resnet18  conv 3x3 64 (no bias), 4 layers of 2 pre-activation blocks (64/128/256/512,
              stride 1/2/2/2; 1x1 strided shortcut convs where the shape changes), relu(bn),
              global average pool, FC 10 (fast_adversarial's PreActResNet18)       CIFAR 3x32x32
Attacks: wong_small PGD-10 eps 0.3 alpha eps/4; cnn7 and preact_resnet18 FGSM-RS (random start +
one step) eps 8/255 alpha 1.25 eps; all start from x + U(-eps, eps) clipped to [0, 1].

Run with Debian's python3 and torch 1.13 (CPU):
  /usr/bin/python3 bench/peer_pytorch.py [--model cnn7] [--threads 2] [--iters 10] [--json]
On a GPU (--device cuda) each phase is timed between device synchronisations, as
`bulwark-bench gpu-model --time N` times bulwark's step; --tf32 lets cuDNN/cuBLAS use TF32.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MNIST = dict(shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,))
CIFAR = dict(shape=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def wong_small(data):
    return nn.Sequential(
        Normalize(data["mean"], data["std"]),
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))


def cnn7(data):
    def conv(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(
        Normalize(data["mean"], data["std"]),
        *conv(3, 64, 1), *conv(64, 64, 1), *conv(64, 128, 2), *conv(128, 128, 1), *conv(128, 128, 1),
        nn.Flatten(), nn.Linear(128 * 16 * 16, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 10))


class PreActBlock(nn.Module):
    """out = conv2(relu(bn2(conv1(a)))) + shortcut, a = relu(bn1(x)) (models/zoo.h)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False))
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        skip = self.shortcut(a) if self.shortcut is not None else x
        return self.conv2(F.relu(self.bn2(self.conv1(a)))) + skip


def preact_resnet18(data):
    layers, cin = [], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(
        Normalize(data["mean"], data["std"]), nn.Conv2d(3, 64, 3, padding=1, bias=False), *layers,
        nn.BatchNorm2d(512), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))


MODELS = {"wong_small": (wong_small, MNIST, 10, 0.3, 0.25),
          "cnn7": (cnn7, CIFAR, 1, 8 / 255, 1.25),
          "preact_resnet18": (preact_resnet18, CIFAR, 1, 8 / 255, 1.25)}  # builder, data, attack steps, eps, alpha / eps


def attack(model, x, y, eps, alpha, steps):
    """PGD-k from a random start (FGSM-RS when k = 1), input gradients only."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp_(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (g,) = torch.autograd.grad(loss, [x_adv])
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + alpha * g.sign(), x - eps), x + eps).clamp_(0, 1)
    return x_adv.detach()


def clock(device):
    """A host clock that first waits for the device's queued work (on a GPU)."""
    def now():
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter()
    return now


def train_step_times(name, batch, threads, warmup, iters, device="cpu", callgrind=False):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    build, data, steps, eps, alpha_over_eps = MODELS[name]
    model = build(data).train().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch, *data["shape"]).to(device)
    y = (torch.arange(batch) % 10).to(device)
    phases = {k: [] for k in ("attack", "forward", "backward", "optimizer", "total", "total_cpu")}
    now = clock(device)

    for it in range(warmup + iters):
        if callgrind and it == warmup:
            torch._C._valgrind_toggle()  # callgrind counts from here (run with --collect-atstart=no)
        t0, cpu0 = now(), time.process_time()
        x_adv = attack(model, x, y, eps, alpha_over_eps * eps, steps)
        t1 = now()
        loss = F.cross_entropy(model(x_adv), y)
        t2 = now()
        loss.backward()
        del loss
        t3 = now()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4, cpu4 = now(), time.process_time()
        if callgrind and it == warmup:
            torch._C._valgrind_toggle()  # ... to here: the first timed step
        if it >= warmup:
            for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, cpu4 - cpu0)):
                phases[k].append(v * 1e3)
    return steps, phases


def eval_times(name, batch, threads, warmup, iters, device="cpu"):
    """`bulwark-bench eval-step`'s two figures: the clean forward in eval mode without gradients,
    and one PGD step in eval mode (forward, input gradient, projected sign step)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    build, data, _, eps, _ = MODELS[name]
    model = build(data).eval().to(device)
    x = torch.rand(batch, *data["shape"]).to(device)
    y = (torch.arange(batch) % 10).to(device)
    now = clock(device)
    clean, pgd = [], []
    for it in range(warmup + iters):
        t0 = now()
        with torch.no_grad():
            model(x)
        t1 = now()
        x_adv = x.clone().requires_grad_(True)  # from the clean input, as bulwark's step
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), [x_adv])
        with torch.no_grad():
            torch.min(torch.max(x_adv + eps / 4 * g.sign(), x - eps), x + eps).clamp_(0, 1)
        t2 = now()
        if it >= warmup:
            clean.append((t1 - t0) * 1e3)
            pgd.append((t2 - t1) * 1e3)
    return statistics.median(clean), statistics.median(pgd)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", choices=sorted(MODELS), help="default: wong_small and cnn7")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--json", action="store_true", help="one JSON line per model")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--tf32", action="store_true", help="on cuda: let cuBLAS/cuDNN use TF32 tensor cores")
    p.add_argument("--callgrind", action="store_true",
                   help="under valgrind --tool=callgrind --collect-atstart=no: collect the first timed step only "
                        "(bench/callgrind_step.sh)")
    p.add_argument("--eval", action="store_true",
                   help="time evaluation instead (bulwark-bench eval-step): clean forward and one PGD step, eval mode")
    a = p.parse_args()
    if a.device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
        torch.backends.cudnn.benchmark = True
    if a.eval:
        for name in a.model or ["wong_small", "cnn7"]:
            clean, pgd = eval_times(name, a.batch, a.threads, a.warmup, a.iters, a.device)
            row = {"impl": "pytorch", "version": torch.__version__, "mode": "eval", "model": name, "batch": a.batch, "threads": a.threads,
                   "clean_ms": round(clean, 3), "pgd_step_ms": round(pgd, 3),
                   "clean_images_per_s": round(a.batch * 1e3 / clean, 1),
                   "pgd_step_images_per_s": round(a.batch * 1e3 / pgd, 1)}
            print(json.dumps(row) if a.json else
                  f"pytorch {torch.__version__} eval-step {name}, batch {a.batch}: clean {clean:.2f} ms "
                  f"({row['clean_images_per_s']:.0f} images/s), PGD step {pgd:.2f} ms "
                  f"({row['pgd_step_images_per_s']:.0f} images x steps/s)", flush=True)
        return
    for name in a.model or ["wong_small", "cnn7"]:
        steps, ph = train_step_times(name, a.batch, a.threads, a.warmup, a.iters, a.device, a.callgrind)
        med = {k: statistics.median(v) for k, v in ph.items()}
        if a.json:
            print(json.dumps({"impl": "pytorch", "version": torch.__version__, "device": a.device,
                              "tf32": a.tf32, "model": name, "batch": a.batch, "threads": a.threads,
                              "attack_steps": steps, "ms_per_step": round(med["total"], 3),
                              "min_ms_per_step": round(min(ph["total"]), 3),
                              "cpu_ms_per_step": round(med["total_cpu"], 3),
                              **{f"{k}_ms": round(med[k], 3) for k in ("attack", "forward", "backward", "optimizer")},
                              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}),
                  flush=True)
        else:
            where = f"{a.threads} threads" if a.device == "cpu" else f"{a.device}{' tf32' if a.tf32 else ''}"
            print(f"pytorch {torch.__version__} train-step {name}, batch {a.batch}, {where}, "
                  f"{steps} attack steps; {a.iters} iterations after {a.warmup} warm-up")
            for k in ("attack", "forward", "backward", "optimizer", "total"):
                print(f"  {k:<10} {med[k]:10.2f} ms (min {min(ph[k]):.2f})")
            print(f"  => {med['total']:.1f} ms/step, {a.batch * 1e3 / med['total']:.0f} images/s, "
                  f"{med['total_cpu']:.1f} CPU ms/step", flush=True)


if __name__ == "__main__":
    main()
