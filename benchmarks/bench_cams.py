"""Heatmap throughput: pytorch-grad-cam vs camseg's fast path vs the floor, per architecture.

The floor is one forward pass plus a backward pass to the target layer, nothing else: no
heatmap can be computed faster with these methods. Target: fast path >= 0.8x floor.

    python benchmarks/bench_cams.py [--archs small_cnn resnet18 ...] [--size 256] [--batch 16] [--device auto]
"""

import argparse
import time

import numpy as np
import torch

from camseg_utils import cams, models, train
from camseg_utils.device import device_name, resolve_device

ap = argparse.ArgumentParser()
ap.add_argument("--archs", nargs="+", default=["small_cnn", "resnet18"])
ap.add_argument("--methods", nargs="+", default=["gradcam"])
ap.add_argument("--layer", default="last")
ap.add_argument("--size", type=int, default=128)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--batches", type=int, default=3, help="timed batches per measurement")
ap.add_argument("--device", default="auto")
args = ap.parse_args()
device = resolve_device(args.device)
name = device_name(device)
print(f"device: {name}; size {args.size}, batch {args.batch}, layer {args.layer}")


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(fn, x, repeats=3):
    """Median img/s over ``repeats`` timings of ``args.batches`` batches, after three warm-up calls."""
    for _ in range(3):
        fn(x)
    rates = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        for _ in range(args.batches):
            fn(x)
        sync()
        rates.append(args.batches * len(x) / (time.perf_counter() - t))
    return float(np.median(rates))


rows = []
for arch in args.archs:
    torch.manual_seed(0)
    # channels-last, as compute_heatmaps runs it; floor, fast path and library share the layout
    model = models.build_model(arch).to(device).eval().to(memory_format=torch.channels_last)
    norm = train.Normalise([0.5] * 3, [0.25] * 3).to(device)
    net = cams._Classifier(model, norm).eval()
    layers = [models.get_layer(model, arch, args.layer)]
    x = torch.rand(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    for method in args.methods:
        # the floor is timed right beside each fast-path timing, so both see the same clocks
        floor = rate(lambda v: cams.activations_and_gradients(net, layers, v), x)
        fast = rate(lambda v: cams.fast_cams(net, layers, v, method), x)
        lib = rate(lambda v: cams.library_cams(net, layers, v, method), x, repeats=1)
        h1 = cams.fast_cams(net, layers, x, method)[0].cpu().numpy()
        h2 = cams.library_cams(net, layers, x, method)[0]
        rows.append((arch, method, lib, fast, floor, fast / floor, float(np.abs(h1 - h2).max())))
        print(f"{arch:12s} {method:9s} library {lib:8.1f} img/s | fast {fast:8.1f} img/s | floor {floor:8.1f} img/s"
              f" | fast/floor {fast / floor:.2f} | max |fast-library| {rows[-1][-1]:.1e}", flush=True)
