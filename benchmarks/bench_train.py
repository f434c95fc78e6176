"""Training throughput: the training step against a bare forward + backward, and the two memory layouts.

The data path (indexing the on-device uint8 split, augmentation, normalisation) must not be
the bottleneck: target within 15 % of the bare loop. The classifiers train channels-last on every
device, the U-Net too except in bfloat16 on a CPU (``camseg_utils.unet.training_layout``); the bare
loop is timed in both layouts, so the choice stays measured, and
in float32 where training autocasts to bfloat16 (``camseg_utils.device.train_bf16``), so that one does too.
``unet`` is the segmentation network of notebooks 05 and 07 (``--unet-width``, segmentation loss).

    python benchmarks/bench_train.py [--archs small_cnn resnet18 unet] [--size 128] [--batch 32] [--steps 20]
                                     [--unet-width 8] [--threads T] [--device auto]
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from camseg_utils import data, models, train, unet
from camseg_utils.device import device_name, precision_name, resolve_device, to_tensor, train_bf16

ap = argparse.ArgumentParser()
ap.add_argument("--archs", nargs="+", default=["small_cnn"])
ap.add_argument("--size", type=int, default=128)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--unet-width", type=int, default=8)
ap.add_argument("--threads", type=int, help="torch threads (default: as torch starts; 06's workers use one)")
ap.add_argument("--device", default="auto")
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
dev = resolve_device(args.device)
name = device_name(dev)
ds = data.generate_synthetic(n_patients=30, size=args.size, seed=0)
amp = train_bf16(dev)
print(f"device: {name}; size {args.size}, batch {args.batch}, {args.steps} steps per measurement; "
      f"training precision {precision_name(amp)}")
CL = torch.channels_last


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def build(arch: str, layout: torch.memory_format) -> torch.nn.Module:
    torch.manual_seed(0)
    model = unet.UNet(args.unet_width) if arch == "unet" else models.build_model(arch)
    return model.to(dev).to(memory_format=layout).train()


for arch in args.archs:
    seg = arch == "unet"
    trains_in = "nchw" if seg and unet.training_layout(dev, amp) == torch.contiguous_format else "cl"
    nets = {"nchw": build(arch, torch.contiguous_format), "cl": build(arch, CL)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in nets.items()}
    norm = train.Normalise(*train.channel_stats(ds.images)).to(dev)
    x_all = to_tensor(ds.images, dev)
    y_all = (torch.from_numpy(np.ascontiguousarray(ds.masks)).float() if seg else
             torch.from_numpy(ds.manifest.tumour.to_numpy().astype(np.int64))).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    order = torch.randint(0, len(x_all), (10_000 * args.batch,), device=dev, generator=gen)  # as an epoch's permutation
    pos = [0]
    xb_fixed = norm(x_all[: args.batch].float() / 255)
    yb_fixed = y_all[: args.batch]

    def step(layout, xb, yb, bf16=amp):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = nets[layout](xb.contiguous(memory_format=CL if layout == "cl" else torch.contiguous_format))
        loss = unet.segmentation_loss(out.float(), yb) if seg else F.cross_entropy(out.float(), yb)
        opts[layout].zero_grad(set_to_none=True)
        loss.backward()
        opts[layout].step()

    def full():  # what train_classifier / train_unet do per step
        idx = order[pos[0]:pos[0] + args.batch]
        pos[0] += args.batch
        if seg:
            xb, yb = train.augment_batch(x_all[idx].float() / 255, gen, y_all[idx][:, None])
            step(trains_in, norm(xb), yb[:, 0])
        else:
            step(trains_in, norm(train.augment_batch(x_all[idx].float() / 255, gen)), y_all[idx])

    cases = {"bare nchw": lambda: step("nchw", xb_fixed, yb_fixed), "bare": lambda: step("cl", xb_fixed, yb_fixed),
             "training": full, **({"bare float32": lambda: step("cl", xb_fixed, yb_fixed, False)} if amp else {})}
    rates: dict[str, list[float]] = {}
    for _ in range(2):  # interleaved, the better of two
        for label, fn in cases.items():
            for _ in range(3):
                fn()
            sync()
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            sync()
            rates.setdefault(label, []).append(args.steps * args.batch / (time.perf_counter() - t))
    n, b, f = (max(rates[k]) for k in ("bare nchw", "bare", "training"))
    used = b if trains_in == "cl" else n
    fp32 = f" | channels-last in float32 {max(rates['bare float32']):8.1f} img/s" if amp else ""
    print(f"{arch:12s} bare forward+backward: NCHW {n:8.1f} img/s, channels-last {b:8.1f} img/s "
          f"(x{b / n:.2f}) | trains {'channels-last' if trains_in == 'cl' else 'NCHW'}, step with data path "
          f"{f:8.1f} img/s | ratio {f / used:.2f}{fp32}", flush=True)
