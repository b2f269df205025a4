#!/usr/bin/env python3
"""torchattacks' AutoAttack on a bulwark checkpoint, for bench/autoattack_vs_torchattacks.sh.

    python bench/peer_torchattacks.py RUN SAMPLES.safetensors EPS STEPS THREADS

RUN is a bulwark run directory; SAMPLES.safetensors is what `bulwark eval --logits` writes (the
evaluated images and labels), so both tools attack the very same samples. The model is rebuilt
in PyTorch by python/bulwark_torch.py. torchattacks' AutoAttack ("standard": APGD-CE, APGD-T,
FAB-T, Square-5000) takes 10 iterations per APGD/FAB run by default; STEPS sets them (the paper:
100). Prints one JSON line: clean and robust accuracy, seconds, versions. Needs torchattacks (pip,
in a venv that sees Debian's python3-torch: the script's caller sets that up).
"""
import json
import os
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "python"))

import torch  # noqa: E402
import torchattacks  # noqa: E402

import bulwark_torch  # noqa: E402


def main(argv):
    run, samples, eps, steps, threads = argv[1], argv[2], float(argv[3]), int(argv[4]), int(argv[5])
    torch.set_num_threads(threads)
    model, _, _ = bulwark_torch.load_checkpoint(run)
    tensors, _ = bulwark_torch.read_safetensors(samples)
    x, y = tensors["images"].float(), tensors["labels"].long()
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    for sub in attack._autoattack.attacks:  # the suite's APGD, APGD-T and FAB: their iterations
        if hasattr(sub, "steps"):
            sub.steps = steps
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    start = time.perf_counter()
    x_adv = attack(x, y)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).float().mean().item()
    linf = (x_adv - x).abs().amax().item()
    print(json.dumps({"tool": "torchattacks", "version": torchattacks.__version__, "torch": torch.__version__,
                      "clean_acc": clean, "robust_acc": robust, "seconds": seconds, "steps": steps,
                      "max_linf": linf, "samples": int(y.numel())}))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
