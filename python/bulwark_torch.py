"""bulwark_torch: bulwark checkpoints in PyTorch, and PyTorch weights back in bulwark.

bulwark (the C++ engine in this repository) stores a trained model as a safetensors file whose
tensors are the model's state_dict under the parameter names of the authors' PyTorch code. This
module rebuilds each network of bulwark's model zoo (models/zoo.cpp) in torch.nn with exactly
those names and shapes, so the weights move between the two without any renaming. It needs only
torch (NumPy is not used) and no build step: copy the file next to your script, or add this
folder to sys.path.

Three uses:

1. Attack or verify a bulwark model with PyTorch tools (torchattacks, AutoAttack, auto_LiRPA):

       import bulwark_torch
       model, config, meta = bulwark_torch.load_checkpoint("runs/my-run")  # eval mode, float32
       # The model takes images in [0, 1], shape [N, C, H, W]; it normalises inside (its first
       # layer is `normalize`), so eps and clipping are in pixel space, as in bulwark.
       #
       #   import torchattacks
       #   atk = torchattacks.PGD(model, eps=8/255, alpha=2/255, steps=50, random_start=True)
       #   x_adv = atk(images, labels)
       #
       #   from autoattack import AutoAttack
       #   adversary = AutoAttack(model, norm="Linf", eps=8/255, version="standard", device="cpu")
       #   x_adv = adversary.run_standard_evaluation(images, labels, bs=500)
       #
       #   from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
       #   bounded = BoundedModule(model, torch.empty_like(images))
       #   x = BoundedTensor(images, PerturbationLpNorm(norm=float("inf"), eps=0.1,
       #                                                x_L=(images - 0.1).clamp(0, 1),
       #                                                x_U=(images + 0.1).clamp(0, 1)))
       #   lower, upper = bounded.compute_bounds(x=(x,), method="IBP")

2. Bring PyTorch weights into bulwark (to evaluate them with bulwark's attacks):

       model = bulwark_torch.build_model({"model": "preact_resnet18",
                                          "input": {"channels": 3, "height": 32, "width": 32,
                                                    "num_classes": 10,
                                                    "mean": [0.4914, 0.4822, 0.4465],
                                                    "std": [0.2471, 0.2435, 0.2616]}})
       model.load_state_dict(my_weights, strict=False)   # e.g. a fast_adversarial checkpoint
       bulwark_torch.save_state_dict(model, "model.safetensors")
       # then:  bulwark import --state-dict model.safetensors --model preact_resnet18 \
       #            --dataset cifar10 --data-dir data/cifar10 --out runs/imported
       #        bulwark eval --checkpoint runs/imported

3. Read the clean logits that `bulwark eval --checkpoint RUN --logits FILE` writes (FILE ending
   in .npy or .safetensors) with read_logits(FILE), e.g. to check a converted model.

Names and conventions:

* A config is the dict stored as JSON in a checkpoint's safetensors metadata under "config" (and
  in the run directory's config.json). build_model reads "model" (one of MODEL_NAMES) and the
  "input" block: "channels", "height", "width", "num_classes", "mean", "std" (per channel; empty
  lists mean 0 and 1). wide_resnet also takes "depth" (6n + 4) and "widen_factor"; bulwark's
  trainer has no flags for them and always builds WRN-16-4, the defaults here, so a key is only
  needed for a network built elsewhere.
* Every model starts with `normalize` ((x - mean) / std per channel, buffers "normalize.mean" and
  "normalize.std"). The sequential models (mlp, wong_*, ibp_*, cnn7) are an nn.Sequential whose
  layers after "normalize" are numbered "0", "1", ... as in the papers' code, ReLU and Flatten
  included ("0.weight" is the first conv). The residual models keep the original attribute names
  ("layer1.0.conv1.weight", "block1.layer.0.convShortcut.weight", "bn", "linear", "bn1", "fc").
* BatchNorm is torch's own (eps 1e-5, momentum 0.1), with "running_mean", "running_var" and
  "num_batches_tracked". bulwark stores num_batches_tracked as an I32 scalar; load_checkpoint
  turns it into int64, and save_state_dict writes torch's int64 as I64, which bulwark reads.
* "sgn:<model>" is <model> as a self-gradient network (SelfGradientNetwork below; bulwark's
  models/sgn.h and docs/sgn.md): the base's names under "base.", the gates as "gates.0", ...;
  the config's "sgn" block gives "taps" (comma-separated layer names, "" for the default),
  "grad" ("full" or "detached") and "gate_init".
* Flatten is C order over [C, H, W], as x.flatten(1). The residual models pool globally
  (adaptive average to 1x1), which is the papers' fixed avg_pool2d at 32x32.
* Tensors in bulwark's files are little-endian and C-contiguous; metadata values are strings.
  A checkpoint's metadata has "format" == "bulwark-checkpoint-1"; its "optimizer.*" tensors (the
  optimizer's state) are not part of the model and are skipped here.
"""

import ast
import ctypes
import json
import math
import os
import struct
import sys
from collections import OrderedDict

import torch
from torch import nn
import torch.nn.functional as F

__all__ = [
    "MODEL_NAMES", "CHECKPOINT_FORMAT", "BulwarkFormatError", "SelfGradientNetwork",
    "build_model", "load_checkpoint", "save_state_dict", "read_logits",
    "read_safetensors", "write_safetensors", "read_npy",
]

MODEL_NAMES = ("mlp", "wong_small", "wong_large", "ibp_small", "ibp_large", "cnn7",
               "preact_resnet18", "wide_resnet")
CHECKPOINT_FORMAT = "bulwark-checkpoint-1"


class BulwarkFormatError(ValueError):
    """A file that is not what it should be, or weights that do not fit the model."""


# ---- layers and models ------------------------------------------------------------------------

class Normalize(nn.Module):
    """(x - mean) / std over the channel dim of [N, C, H, W] images; mean and std are buffers."""

    def __init__(self, mean, std, dtype=torch.float32):
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise ValueError(f"Normalize: {len(mean)} means and {len(std)} standard deviations")
        if any(not s > 0 for s in std):
            raise ValueError(f"Normalize: standard deviations must be > 0, got {list(std)}")
        # float64 -> dtype, as bulwark rounds the config's doubles into the model's dtype.
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float64).to(dtype))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float64).to(dtype))

    def forward(self, x):
        c = self.mean.numel()
        # (The check is skipped while tracing, e.g. by auto_LiRPA: shapes are fixed there.)
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != c):
            raise ValueError(f"Normalize: input of shape {tuple(x.shape)} should be images [N, {c}, H, W]")
        return (x - self.mean.view(1, c, 1, 1)) / self.std.view(1, c, 1, 1)


def _conv_size(size, kernel, stride, padding, what):
    out = (size + 2 * padding - kernel) // stride + 1
    if size + 2 * padding < kernel or out < 1:
        raise ValueError(f"{what}: a {kernel}x{kernel} kernel (stride {stride}, padding {padding}) does not fit "
                         f"an input of size {size}")
    return out


def _sequential(cfg, spec, dtype):
    """A zoo Sequential. spec: ("conv", out, kernel, stride, padding, bn) | ("flatten",) |
    ("hidden", out, bn) | ("logits",). ReLU follows every conv and hidden layer (after its
    BatchNorm) and takes a number of its own, as in nn.Sequential."""
    c, h, w = cfg["channels"], cfg["height"], cfg["width"]
    features = None
    layers = [("normalize", Normalize(cfg["mean"], cfg["std"], dtype))]

    def add(module):
        layers.append((str(len(layers) - 1), module))

    for item in spec:
        kind = item[0]
        if kind == "conv":
            _, out, k, s, p, bn = item
            what = f"Conv2d({c} -> {out}, {k}x{k}, stride {s}, padding {p})"
            h, w = _conv_size(h, k, s, p, what), _conv_size(w, k, s, p, what)
            add(nn.Conv2d(c, out, k, stride=s, padding=p, bias=True, dtype=dtype))
            c = out
            if bn:
                add(nn.BatchNorm2d(out, eps=1e-5, momentum=0.1, dtype=dtype))
            add(nn.ReLU())
        elif kind == "flatten":
            add(nn.Flatten(1))
            features = c * h * w
        elif kind == "hidden":
            _, out, bn = item
            add(nn.Linear(features, out, bias=True, dtype=dtype))
            if bn:
                add(nn.BatchNorm1d(out, eps=1e-5, momentum=0.1, dtype=dtype))
            add(nn.ReLU())
            features = out
        elif kind == "logits":
            add(nn.Linear(features, cfg["num_classes"], bias=True, dtype=dtype))
    return nn.Sequential(OrderedDict(layers))


def _conv3x3_or_1x1(cin, cout, kernel, stride, dtype):
    # The residual models' convs: "same" padding (kernel // 2), no bias, a BatchNorm after each.
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False, dtype=dtype)


class PreActBlock(nn.Module):
    """a = relu(bn1(x)); out = conv2(relu(bn2(conv1(a)))) + (shortcut(a) if it exists else x)."""

    def __init__(self, in_planes, planes, stride, dtype):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, dtype=dtype)
        self.conv1 = _conv3x3_or_1x1(in_planes, planes, 3, stride, dtype)
        self.bn2 = nn.BatchNorm2d(planes, dtype=dtype)
        self.conv2 = _conv3x3_or_1x1(planes, planes, 3, 1, dtype)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(_conv3x3_or_1x1(in_planes, planes, 1, stride, dtype))
        else:
            self.shortcut = None

    def forward(self, x):
        a = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        return self.conv2(F.relu(self.bn2(self.conv1(a)))) + skip


class PreActResNet18(nn.Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        self.normalize = Normalize(cfg["mean"], cfg["std"], dtype)
        self.conv1 = _conv3x3_or_1x1(cfg["channels"], 64, 3, 1, dtype)
        planes_in = 64
        for index, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
            blocks = []
            for s in (stride, 1):
                blocks.append(PreActBlock(planes_in, planes, s, dtype))
                planes_in = planes
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(512, dtype=dtype)
        self.linear = nn.Linear(512, cfg["num_classes"], dtype=dtype)

    def forward(self, x):
        h = self.conv1(self.normalize(x))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        h = F.adaptive_avg_pool2d(F.relu(self.bn(h)), 1).flatten(1)
        return self.linear(h)


class WideBasicBlock(nn.Module):
    """a = relu(bn1(x)); out = conv2(relu(bn2(conv1(a)))) + (convShortcut(a) or x)."""

    def __init__(self, in_planes, out_planes, stride, dtype):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, dtype=dtype)
        self.conv1 = _conv3x3_or_1x1(in_planes, out_planes, 3, stride, dtype)
        self.bn2 = nn.BatchNorm2d(out_planes, dtype=dtype)
        self.conv2 = _conv3x3_or_1x1(out_planes, out_planes, 3, 1, dtype)
        if in_planes != out_planes:
            self.convShortcut = _conv3x3_or_1x1(in_planes, out_planes, 1, stride, dtype)
        elif stride != 1:
            raise ValueError("WideBasicBlock: an identity shortcut cannot have stride > 1")
        else:
            self.convShortcut = None

    def forward(self, x):
        a = F.relu(self.bn1(x))
        skip = x if self.convShortcut is None else self.convShortcut(a)
        return self.conv2(F.relu(self.bn2(self.conv1(a)))) + skip


class WideNetworkBlock(nn.Module):
    def __init__(self, num_blocks, in_planes, out_planes, stride, dtype):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dtype)
            for i in range(num_blocks)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, cfg, depth, widen_factor, dtype):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"wide_resnet: depth {depth} is not 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...)")
        if widen_factor < 1:
            raise ValueError(f"wide_resnet: widen_factor {widen_factor} must be >= 1")
        n, k = (depth - 4) // 6, widen_factor
        self.normalize = Normalize(cfg["mean"], cfg["std"], dtype)
        self.conv1 = _conv3x3_or_1x1(cfg["channels"], 16, 3, 1, dtype)
        self.block1 = WideNetworkBlock(n, 16, 16 * k, 1, dtype)
        self.block2 = WideNetworkBlock(n, 16 * k, 32 * k, 2, dtype)
        self.block3 = WideNetworkBlock(n, 32 * k, 64 * k, 2, dtype)
        self.bn1 = nn.BatchNorm2d(64 * k, dtype=dtype)
        self.fc = nn.Linear(64 * k, cfg["num_classes"], dtype=dtype)

    def forward(self, x):
        h = self.conv1(self.normalize(x))
        h = self.block3(self.block2(self.block1(h)))
        h = F.adaptive_avg_pool2d(F.relu(self.bn1(h)), 1).flatten(1)
        return self.fc(h)


# Layer lists of the sequential zoo models: conv(out, kernel, stride, padding, batch_norm).
def _conv(out, k, s, p, bn=False):
    return ("conv", out, k, s, p, bn)


def _hidden(out, bn=False):
    return ("hidden", out, bn)


_FLAT, _LOGITS = ("flatten",), ("logits",)
_SEQUENTIAL_SPECS = {
    "mlp": [_FLAT, _hidden(100), _hidden(100), _LOGITS],
    "wong_small": [_conv(16, 4, 2, 1), _conv(32, 4, 2, 1), _FLAT, _hidden(100), _LOGITS],
    "wong_large": [_conv(32, 3, 1, 1), _conv(32, 4, 2, 1), _conv(64, 3, 1, 1), _conv(64, 4, 2, 1), _FLAT,
                   _hidden(512), _hidden(512), _LOGITS],
    "ibp_small": [_conv(16, 4, 2, 0), _conv(32, 4, 1, 0), _FLAT, _hidden(100), _LOGITS],
    "ibp_large": [_conv(64, 3, 1, 1), _conv(64, 3, 1, 1), _conv(128, 3, 2, 1), _conv(128, 3, 1, 1),
                  _conv(128, 3, 1, 1), _FLAT, _hidden(512), _LOGITS],
    "cnn7": [_conv(64, 3, 1, 1, True), _conv(64, 3, 1, 1, True), _conv(128, 3, 2, 1, True),
             _conv(128, 3, 1, 1, True), _conv(128, 3, 1, 1, True), _FLAT, _hidden(512, True), _LOGITS],
}


def _input_block(config):
    """The model's input description from a bulwark config, checked like bulwark's make_model."""
    block = config.get("input")
    if not isinstance(block, dict):
        raise BulwarkFormatError("config has no 'input' block (channels, height, width, num_classes, mean, std)")
    out = {}
    for key in ("channels", "height", "width", "num_classes"):
        if key not in block:
            raise BulwarkFormatError(f"config 'input' has no '{key}'")
        out[key] = int(block[key])
    if out["channels"] < 1 or out["height"] < 1 or out["width"] < 1:
        raise ValueError(f"config input shape {out['channels']}x{out['height']}x{out['width']} must be positive")
    if out["num_classes"] < 2:
        raise ValueError(f"config num_classes is {out['num_classes']}, a classifier needs at least 2")
    c = out["channels"]
    mean = [float(v) for v in (block.get("mean") or [])] or [0.0] * c
    std = [float(v) for v in (block.get("std") or [])] or [1.0] * c
    if len(mean) != c or len(std) != c:
        raise ValueError(f"config: {c} input channels but {len(mean)} means and {len(std)} standard deviations")
    out["mean"], out["std"] = mean, std
    return out


def build_model(config, dtype=torch.float32):
    """The torch.nn twin of bulwark's make_model(config["model"], ...), freshly initialised by torch.

    config: a bulwark run config (dict, or its JSON text); see the module docstring for the keys.
    The model's state_dict has bulwark's names and shapes; it is returned in training mode, as
    torch and bulwark build modules (call .eval() before attacking it).
    """
    if isinstance(config, (str, bytes)):
        config = json.loads(config)
    name = config.get("model")
    if isinstance(name, str) and name.startswith("sgn:"):
        sgn = config.get("sgn") or {}
        base = build_model(dict(config, model=name[len("sgn:"):]), dtype)
        taps = [t.strip() for t in str(sgn.get("taps", "")).split(",") if t.strip()]
        cfg = _input_block(config)
        return SelfGradientNetwork(base, taps, float(sgn.get("gate_init", 0.1)), sgn.get("grad", "full"),
                                   (cfg["channels"], cfg["height"], cfg["width"]), dtype)
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; bulwark's zoo has: {', '.join(MODEL_NAMES)}")
    cfg = _input_block(config)
    if name in _SEQUENTIAL_SPECS:
        return _sequential(cfg, _SEQUENTIAL_SPECS[name], dtype)
    if name == "preact_resnet18":
        return PreActResNet18(cfg, dtype)
    return WideResNet(cfg, int(config.get("depth", 16)), int(config.get("widen_factor", 4)), dtype)


# ---- self-gradient networks ---------------------------------------------------------------------

def _tappable_layers(model):
    """Every layer of every nn.Sequential in `model` by dotted name, in bulwark's order."""
    out = []
    for prefix, m in model.named_modules():
        if isinstance(m, nn.Sequential):
            for name, layer in m.named_children():
                out.append((prefix + "." + name if prefix else name, layer))
    return out


class SelfGradientNetwork(nn.Module):
    """bulwark's sgn:<model>: a probe pass gives g_l = d CE(f(x), argmax f(x)) / d h_l at each
    tapped layer's output h_l; the main pass continues from h_l - gamma_l g_l / (rms(g_l) + 1e-12)
    (rms over one sample's elements), gamma_l = softplus(gates[l]) per channel. grad="full" keeps
    g_l differentiable (create_graph): attacks on this module differentiate the full graph, as
    bulwark's do; "detached" treats it as data."""

    def __init__(self, base, taps, gate_init, grad, input_shape, dtype=torch.float32):
        super().__init__()
        if grad not in ("full", "detached"):
            raise ValueError(f"sgn grad must be 'full' or 'detached', got {grad!r}")
        if not gate_init > 0:
            raise ValueError(f"sgn gate_init must be > 0, got {gate_init}")
        self.base = base
        self.grad = grad
        layers = _tappable_layers(base)
        if not taps:  # bulwark's default: a sequential base's ReLUs, else every block of a Sequential
            if isinstance(base, nn.Sequential):
                taps = [n for n, m in layers if "." not in n and isinstance(m, nn.ReLU)]
            else:
                taps = [n for n, m in layers if any(True for _ in m.children())]
        by_name = dict(layers)
        for t in taps:
            if t not in by_name:
                raise ValueError(f"sgn: {t!r} is not a layer of the base model; its layers are: "
                                 f"{', '.join(n for n, _ in layers)}")
        self.taps = list(taps)
        self._tapped = [by_name[t] for t in taps]
        channels = [0] * len(taps)
        was_training = base.training
        base.eval()
        with torch.no_grad(), self._hooked(lambda k, out: channels.__setitem__(k, out.shape[1])):
            base(torch.zeros((1,) + tuple(input_shape), dtype=dtype))
        base.train(was_training)
        rho = math.log(math.expm1(gate_init))
        self.gates = nn.ParameterList([nn.Parameter(torch.full((c,), rho, dtype=dtype)) for c in channels])

    def _hooked(self, fn):
        """A context in which tapped layer k's output goes through fn(k, output) (its result, if not None)."""
        model = self

        class Hooks:
            def __enter__(self):
                self.handles = [m.register_forward_hook(lambda _m, _i, out, k=k: fn(k, out))
                                for k, m in enumerate(model._tapped)]

            def __exit__(self, *exc):
                for h in self.handles:
                    h.remove()
        return Hooks()

    def forward(self, x):
        full = self.grad == "full" and torch.is_grad_enabled()
        hs = [None] * len(self._tapped)

        def probe(k, out):
            hs[k] = out if out.requires_grad else out.detach().requires_grad_(True)
            return hs[k]

        with torch.enable_grad():
            with self._hooked(probe):
                z = self.base(x)
            loss = F.cross_entropy(z, z.detach().argmax(1), reduction="sum")
            gs = torch.autograd.grad(loss, hs, create_graph=full, allow_unused=True)
        gs = [torch.zeros_like(h) if g is None else (g if full else g.detach()) for g, h in zip(gs, hs)]

        def main(k, out):
            g = gs[k]
            rms = (g.pow(2).flatten(1).mean(1) + 1e-24).sqrt() + 1e-12
            shape = [1] * out.dim()
            shape[1] = out.shape[1]
            return out - F.softplus(self.gates[k]).view(shape) * g / rms.view([-1] + [1] * (out.dim() - 1))

        with self._hooked(main):
            return self.base(x)


# ---- safetensors ------------------------------------------------------------------------------

# safetensors dtype name -> (torch dtype, bytes per element)
_ST_DTYPES = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}
_ST_NAMES = {dt: name for name, (dt, _) in _ST_DTYPES.items()}


def _from_little_endian(raw, dtype, size, shape):
    """A tensor of `shape` from little-endian bytes (copied: the result owns its memory)."""
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    buf = bytearray(raw)
    if sys.byteorder == "big" and size > 1:
        swapped = torch.frombuffer(buf, dtype=torch.uint8).view(-1, size).flip(1).contiguous()
        buf = bytearray(_tensor_bytes(swapped))
    return torch.frombuffer(buf, dtype=dtype).reshape(shape)  # the tensor keeps `buf` alive


def _tensor_bytes(t):
    """The bytes of a CPU tensor in C order, little-endian."""
    t = t.detach().to("cpu").contiguous()
    size = t.element_size()
    data = ctypes.string_at(t.data_ptr(), t.numel() * size) if t.numel() else b""
    if sys.byteorder == "big" and size > 1 and data:
        flipped = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(-1, size).flip(1).contiguous()
        data = ctypes.string_at(flipped.data_ptr(), flipped.numel())
    return data


def read_safetensors(path):
    """(OrderedDict name -> tensor in file order, metadata dict of strings) of a safetensors file.

    The header and every tensor's dtype, shape and byte range are checked against the file size;
    errors name the file and what is wrong.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise BulwarkFormatError(f"{path}: {len(data)} bytes is too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise BulwarkFormatError(f"{path}: header length {header_len} exceeds the file size {len(data)}: "
                                 "truncated, or not a safetensors file")
    try:
        header = json.loads(data[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BulwarkFormatError(f"{path}: the safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise BulwarkFormatError(f"{path}: the safetensors header is not a JSON object")
    body = memoryview(data)[8 + header_len:]
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BulwarkFormatError(f"{path}: __metadata__ must map strings to strings")
    tensors = OrderedDict()
    for name, entry in header.items():
        try:
            dtype_name, shape, (begin, end) = entry["dtype"], [int(d) for d in entry["shape"]], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise BulwarkFormatError(f"{path}: tensor {name!r} has a malformed header entry {entry!r}") from None
        if dtype_name not in _ST_DTYPES:
            raise BulwarkFormatError(f"{path}: tensor {name!r} has dtype {dtype_name}, not one of "
                                     f"{', '.join(_ST_DTYPES)}")
        dtype, size = _ST_DTYPES[dtype_name]
        if any(d < 0 for d in shape):
            raise BulwarkFormatError(f"{path}: tensor {name!r} has a negative dimension in {shape}")
        expect = math.prod(shape) * size
        if not (0 <= begin <= end) or end - begin != expect:
            raise BulwarkFormatError(f"{path}: tensor {name!r} {dtype_name}{shape} needs {expect} bytes, "
                                     f"its data_offsets [{begin}, {end}] say otherwise")
        if end > len(body):
            raise BulwarkFormatError(f"{path}: tensor {name!r} ends at byte {end} of a {len(body)}-byte data "
                                     "section: truncated file?")
        tensors[name] = _from_little_endian(body[begin:end], dtype, size, shape)
    return tensors, dict(metadata)


def write_safetensors(path, tensors, metadata=None):
    """Writes name -> tensor (in the order given) as safetensors, atomically (path + '.tmp', renamed).

    Tensors are stored C-contiguous and little-endian in their own dtype (int64 stays I64);
    metadata, if given, must map strings to strings.
    """
    header = OrderedDict()
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    blobs, offset = [], 0
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name!r} is a {type(t).__name__}, not a tensor")
        if name == "__metadata__" or name in header:
            raise ValueError(f"tensor name {name!r} is reserved or repeated")
        if t.dtype not in _ST_NAMES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot hold")
        blob = _tensor_bytes(t)
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned
    tmp = str(path) + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for blob in blobs:
                f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ---- checkpoints ------------------------------------------------------------------------------

def _fit_state(model, state, path):
    """state converted to the model's dtypes, or an error listing every name and shape that differs."""
    expected = model.state_dict()
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in expected]
    misshaped = [f"{n}: file {list(state[n].shape)}, model {list(expected[n].shape)}"
                 for n in expected if n in state and state[n].shape != expected[n].shape]
    if missing or unexpected or misshaped:
        def listed(names, sep, most=24):
            more = f"{sep}... ({len(names) - most} more)" if len(names) > most else ""
            return sep.join(names[:most]) + more

        lines = [f"{path}: the weights do not fit the model"]
        if missing:
            lines.append(f"  missing ({len(missing)}): " + listed(missing, ", "))
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): " + listed(unexpected, ", "))
        if misshaped:
            lines.append(f"  wrong shape ({len(misshaped)}): " + listed(misshaped, "; "))
        raise BulwarkFormatError("\n".join(lines))
    return OrderedDict((n, state[n].to(expected[n].dtype)) for n in expected)


def load_checkpoint(path, dtype=torch.float32):
    """(model, config, metadata) of a bulwark checkpoint: a .safetensors file or a run directory
    (its last.safetensors). The model is built from the checkpoint's config, holds its weights and
    BatchNorm statistics (num_batches_tracked as int64), and is in eval mode; config is the run's
    config as a dict; metadata is the file's metadata (strings; "config" among them)."""
    path = str(path)
    if os.path.isdir(path):
        path = os.path.join(path, "last.safetensors")
    tensors, metadata = read_safetensors(path)
    fmt = metadata.get("format")
    if fmt != CHECKPOINT_FORMAT:
        found = "no 'format' in its metadata" if fmt is None else f"metadata format {fmt!r}"
        raise BulwarkFormatError(f"{path} is a safetensors file but not a bulwark checkpoint ({found}, expected "
                                 f"{CHECKPOINT_FORMAT!r}); for a plain state_dict use read_safetensors and "
                                 "model.load_state_dict")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as e:
        raise BulwarkFormatError(f"{path}: the checkpoint's 'config' metadata is missing or damaged ({e})") from None
    model = build_model(config, dtype=dtype)
    state = OrderedDict((n, t) for n, t in tensors.items() if not n.startswith("optimizer."))
    model.load_state_dict(_fit_state(model, state, path), strict=True)
    model.eval()
    return model, config, metadata


def save_state_dict(model, path, metadata=None):
    """Writes model.state_dict() (or a state dict given directly) as safetensors for
    `bulwark import --state-dict path --model NAME --dataset DATASET --out RUN_DIR`.

    Every tensor keeps its dtype (float32 F32, int64 num_batches_tracked I64, ...). No "format"
    metadata is written: bulwark import takes a file with a "format" key for a checkpoint.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    write_safetensors(path, OrderedDict((n, t.detach().cpu()) for n, t in state.items()), metadata)


# ---- .npy and logits --------------------------------------------------------------------------

_NPY_DTYPES = {"f8": torch.float64, "f4": torch.float32, "f2": torch.float16, "i8": torch.int64,
               "i4": torch.int32, "i2": torch.int16, "i1": torch.int8, "u1": torch.uint8, "b1": torch.bool}


def read_npy(path):
    """A NumPy .npy file (versions 1.0 to 3.0, numeric dtypes, either byte order) as a tensor."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        raise BulwarkFormatError(f"{path}: not a .npy file (no \\x93NUMPY magic)")
    major = data[6]
    if major == 1:
        (hlen,), start = struct.unpack("<H", data[8:10]), 10
    elif major in (2, 3):
        (hlen,), start = struct.unpack("<I", data[8:12]), 12
    else:
        raise BulwarkFormatError(f"{path}: .npy version {major}.{data[7]} is not supported")
    try:
        header = ast.literal_eval(data[start:start + hlen].decode("latin1" if major < 3 else "utf-8"))
        descr, fortran, shape = header["descr"], header["fortran_order"], tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError) as e:
        raise BulwarkFormatError(f"{path}: damaged .npy header ({e})") from None
    if not isinstance(descr, str) or descr[1:] not in _NPY_DTYPES or descr[0] not in "<>|=":
        raise BulwarkFormatError(f"{path}: .npy dtype {descr!r} is not supported")
    dtype = _NPY_DTYPES[descr[1:]]
    size = torch.empty((), dtype=dtype).element_size()
    payload = data[start + hlen:]
    expect = math.prod(shape) * size
    if len(payload) != expect:
        raise BulwarkFormatError(f"{path}: shape {shape} of {descr} needs {expect} bytes of data, the file has "
                                 f"{len(payload)}")
    if descr[0] == ">" and size > 1:  # big-endian data: reverse each element's bytes
        payload = _tensor_bytes(torch.frombuffer(bytearray(payload), dtype=torch.uint8).view(-1, size).flip(1))
    if fortran:
        t = _from_little_endian(payload, dtype, size, list(reversed(shape)))
        return t.permute(*reversed(range(len(shape)))).contiguous()
    return _from_little_endian(payload, dtype, size, list(shape))


def read_logits(path):
    """(logits, labels) from `bulwark eval --logits FILE`.

    FILE.npy holds float32 [N, K] logits only: labels is None. FILE.safetensors holds "logits"
    (F32 [N, K]) and "labels" (I32 [N], returned as int64 for torch's losses). Both are the clean
    logits of the evaluated test samples, in dataset order. (The .safetensors file may hold the
    input images too: read them with read_safetensors(FILE)[0]["images"].)
    """
    path = str(path)
    if path.endswith(".npy"):
        logits = read_npy(path)
        labels = None
    elif path.endswith(".safetensors"):
        tensors, _ = read_safetensors(path)
        if "logits" not in tensors:
            raise BulwarkFormatError(f"{path} has no 'logits' tensor (it has: {', '.join(tensors) or 'none'})")
        logits = tensors["logits"]
        labels = tensors["labels"].long() if "labels" in tensors else None
        if labels is not None and labels.shape != logits.shape[:1]:
            raise BulwarkFormatError(f"{path}: labels {list(labels.shape)} do not match logits {list(logits.shape)}")
    else:
        raise ValueError(f"{path}: bulwark writes logits as .npy or .safetensors")
    if logits.dim() != 2:
        raise BulwarkFormatError(f"{path}: logits should be [N, K], got shape {list(logits.shape)}")
    return logits, labels
