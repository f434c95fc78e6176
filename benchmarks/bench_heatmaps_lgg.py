"""Heatmaps for every LGG slice with the fast path (target: all 2,914 slices at 256 x 256 in under 2 minutes).

Speed does not depend on the weights, so an untrained model stands in for a trained one; the
heatmaps go through the same memory-mapped, float16 cache writer as the pipeline.

    python benchmarks/bench_heatmaps_lgg.py [--archs small_cnn resnet18] [--method gradcam] [--layer middle]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from camseg_utils import data, heatmap_cache, models, train
from camseg_utils.device import device_name, resolve_device

ap = argparse.ArgumentParser()
ap.add_argument("--root", default=str(data.default_lgg_root()), help="kaggle_3m folder (default $CAMSEG_LGG_ROOT or data/raw/kaggle_3m)")
ap.add_argument("--archs", nargs="+", default=["small_cnn", "resnet18"])
ap.add_argument("--method", default="gradcam")
ap.add_argument("--layer", default="middle")
ap.add_argument("--size", type=int, default=256)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--device", default="auto")
args = ap.parse_args()
dev = resolve_device(args.device)
name = device_name(dev)
ds = data.load_lgg(args.root, size=args.size, progress=False)
print(f"device: {name}; {len(ds)} slices at {args.size} x {args.size}, {args.method} @ {args.layer}, batch {args.batch}")
for arch in args.archs:
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = models.build_model(arch)
        norm = train.Normalise(*train.channel_stats(ds.images[:200]))
        ckpt = Path(tmp) / "best.pt"
        torch.save({"arch": arch, "image_size": args.size, "norm_mean": norm.mean.flatten().tolist(),
                    "norm_std": norm.std.flatten().tolist(), "split_hash": "", "model": model.state_dict()}, ckpt)
        t = time.perf_counter()
        hm = heatmap_cache.cached_heatmaps(tmp, ckpt, ds.images, "all", args.method, args.layer, batch_size=args.batch,
                                  device=dev, progress=False)
        dt = time.perf_counter() - t
        print(f"{arch:12s} {len(ds)} heatmaps in {dt:.1f} s ({len(ds) / dt:.1f} img/s), cached as "
              f"{hm.heatmap.dtype} {tuple(hm.heatmap.shape)}", flush=True)
