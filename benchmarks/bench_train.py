"""Training throughput against a bare forward + backward loop over the same model and batch.

The data path (indexing the on-device uint8 split, augmentation, normalisation) must not be
the bottleneck: target within 15 % of the bare loop. Prints both.

    python benchmarks/bench_train.py [--archs small_cnn resnet18] [--size 128] [--batch 32] [--steps 20] [--device auto]
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from camseg_utils import data, models, train
from camseg_utils.device import device_name, resolve_device, to_tensor

ap = argparse.ArgumentParser()
ap.add_argument("--archs", nargs="+", default=["small_cnn"])
ap.add_argument("--size", type=int, default=128)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--device", default="auto")
args = ap.parse_args()
dev = resolve_device(args.device)
name = device_name(dev)
ds = data.generate_synthetic(n_patients=30, size=args.size, seed=0)
print(f"device: {name}; size {args.size}, batch {args.batch}, {args.steps} steps per measurement")


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


for arch in args.archs:
    torch.manual_seed(0)
    model = models.build_model(arch).to(dev).train()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = dev.type == "cuda"
    norm = train.Normalise(*train.channel_stats(ds.images)).to(dev)
    x_all = to_tensor(ds.images, dev)
    y_all = torch.from_numpy(ds.manifest.tumour.to_numpy().astype(np.int64)).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    order = torch.randint(0, len(x_all), (10_000 * args.batch,), device=dev, generator=gen)  # as an epoch's permutation
    pos = [0]
    xb_fixed = norm(x_all[: args.batch].float() / 255).contiguous(memory_format=torch.channels_last)
    yb_fixed = y_all[: args.batch]

    def step(xb, yb):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(xb).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def bare():
        step(xb_fixed, yb_fixed)

    def full():  # what train_classifier does per step
        idx = order[pos[0]:pos[0] + args.batch]
        pos[0] += args.batch
        xb = norm(train.augment_batch(x_all[idx].float() / 255, gen)).contiguous(memory_format=torch.channels_last)
        step(xb, y_all[idx])

    rates = {}
    for label, fn in (("bare", bare), ("training", full), ("bare ", bare), ("training ", full)):
        for _ in range(3):
            fn()
        sync()
        t = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync()
        rates.setdefault(label.strip(), []).append(args.steps * args.batch / (time.perf_counter() - t))
    b, f = max(rates["bare"]), max(rates["training"])
    print(f"{arch:12s} bare forward+backward {b:8.1f} img/s | training step with data path {f:8.1f} img/s "
          f"| ratio {f / b:.2f}", flush=True)
