"""Heatmap throughput: camseg against its peers (torchcam, pytorch-grad-cam) and against the floor.

The floor is one forward pass plus one backward pass to the target layers, nothing else: no
gradient heatmap can be computed with less. Every figure is images per second, the median of
``--repeats`` timings; the contenders of one case are timed in turn within each repetition
(interleaved), so a slow spell on a shared machine hits every contender alike.

``--study`` times what a study of the heatmaps asks for: the 5 gradient methods (GradCAM,
GradCAM++, HiResCAM, XGradCAM, LayerCAM) at 3 layers (early, middle, last), one heatmap at
the image's size per (method, layer):

- camseg: all 15 maps from one forward and one backward pass (``cams.many_cams``), each with
  its raw map;
- torchcam: one extractor call per method and layer (a forward and a backward pass each),
  tensors kept on the device, each map resized to the image (bilinear) as camseg's are.
  torchcam has no HiResCAM: its GradCAM call stands in for it (the same passes and cost);
- pytorch-grad-cam: one call per method and layer, as its API gives them;
- floor: one forward pass and one backward pass to the 3 layers.

It also times one method at one layer (GradCAM at ``--layer``: camseg against torchcam), and
EigenCAM and ScoreCAM against pytorch-grad-cam at the small CNN's early block (their own,
smaller batch ``--slow-batch``: the library's EigenCAM takes seconds per image there).

    python benchmarks/bench_cams.py --study [--archs small_cnn resnet18] [--size 128] [--batch 16] [--device cpu]

On a CUDA machine (the study at 256 x 256, batch 64):

    python benchmarks/bench_cams.py --study --size 256 --batch 64 --slow-batch 16 --device cuda

Without ``--study``: per method, camseg's single-method path against pytorch-grad-cam and the
floor at one layer (``--methods``, ``--layer``).

The script runs with the allocator settings of the pipeline's stage kernels
(``runner.KEPT_MEMORY``: glibc keeps freed blocks for reuse instead of faulting fresh pages in
for every large temporary); it re-starts itself with them where they are not set, so every
contender runs in the process the notebooks give it. ``--default-malloc`` times under glibc's
defaults instead.
"""

import argparse
import os
import sys
import time

from camseg_utils.runner import KEPT_MEMORY

if "--default-malloc" not in sys.argv and any(k not in os.environ for k in KEPT_MEMORY):
    # glibc reads these at start-up: re-start with them set (before torch is imported)
    os.execve(sys.executable, [sys.executable, *sys.argv], {**KEPT_MEMORY, **os.environ})

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from camseg_utils import cam_library, cams, gradient_free, models, train  # noqa: E402
from camseg_utils.device import device_name, resolve_device  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--study", action="store_true", help="5 gradient methods x 3 layers against torchcam and the floor")
ap.add_argument("--archs", nargs="+", default=["small_cnn", "resnet18"])
ap.add_argument("--methods", nargs="+", default=["gradcam"], help="without --study: methods to time")
ap.add_argument("--layer", default="last", help="the single-method layer")
ap.add_argument("--size", type=int, default=128)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--slow-batch", type=int, default=4, help="batch of the EigenCAM / ScoreCAM comparison")
ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions per case (median)")
ap.add_argument("--batches", type=int, default=1, help="calls per timing")
ap.add_argument("--device", default="auto")
ap.add_argument("--default-malloc", action="store_true", help="glibc's allocator defaults, not the stage kernels'")
args = ap.parse_args()
device = resolve_device(args.device)
malloc = ", ".join(f"{k}={os.environ[k]}" for k in KEPT_MEMORY if k in os.environ) or "glibc defaults"
print(f"device: {device_name(device)}; size {args.size}, batch {args.batch}, torch {torch.__version__}, "
      f"allocator: {malloc}", flush=True)
TUMOUR = cams.TUMOUR
STUDY_LAYERS = ("early", "middle", "last")


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def race(contenders: dict, x: torch.Tensor, repeats: int | None = None, warmup: int = 1) -> dict:
    """Median images per second of each contender, timed in turn within each repetition."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn(x)
    sync()
    times = {k: [] for k in contenders}
    for _ in range(repeats or args.repeats):
        for k, fn in contenders.items():
            sync()
            t = time.perf_counter()
            for _ in range(args.batches):
                fn(x)
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: args.batches * len(x) / float(np.median(v)) for k, v in times.items()}


def setup(arch: str):
    torch.manual_seed(0)
    # channels-last, as compute_heatmaps runs it; every contender gets the same model
    model = models.build_model(arch).to(device).eval().to(memory_format=torch.channels_last)
    norm = train.Normalise([0.5] * 3, [0.25] * 3).to(device)
    return model, cams._Classifier(model, norm).eval()


def images(batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, args.size, args.size, generator=g).to(device).contiguous(
        memory_format=torch.channels_last)


def library(method: str, layer_modules: list, net):
    """pytorch-grad-cam, one call per layer (its maps come back as numpy arrays)."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "hirescam": pgc.HiResCAM,
           "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM, "eigencam": pgc.EigenCAM,
           "scorecam": pgc.ScoreCAM}[method]

    def run(x):
        out = []
        for layer in layer_modules:
            with cls(model=net, target_layers=[layer]) as cam:
                out.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(TUMOUR)] * len(x)))
        return out

    return run


def torchcam(methods: list[str], layer_modules: list, net):
    """torchcam, one extractor call per (method, layer), maps resized to the image on the device."""
    from torchcam import methods as tc

    cls = {"gradcam": tc.GradCAM, "gradcam++": tc.GradCAMpp, "hirescam": tc.GradCAM,  # no HiResCAM in torchcam
           "xgradcam": tc.XGradCAM, "layercam": tc.LayerCAM}

    def run(x):
        out = []
        for method in methods:
            for layer in layer_modules:
                with cls[method](net, target_layer=layer) as extractor:
                    scores = net(x)
                    cam = extractor(class_idx=TUMOUR, scores=scores)[0]
                out.append(F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False))
        return out

    return run


def score_forwards(net, layer, x: torch.Tensor):
    """ScoreCAM's floor: the network's forward passes of one masked image per live channel (+ the all-zero one).

    Every exact ScoreCAM scores each channel's masked image with a forward pass (camseg scores
    the channels constant over the image once, as one all-zero image); this times those passes
    alone, in camseg's batches, on stand-in images (a dense forward pass costs the same whatever
    the pixels).
    """
    acts = cams.activations_and_gradients(net, [layer], x, grad_layers=[])[0][0].flatten(2)
    count = int((acts.amax(-1) > acts.amin(-1)).sum()) + 1
    batch = gradient_free.score_batch(x.device)
    stand_in = images(batch)

    def run(_):
        with torch.inference_mode():
            for i in range(0, count, batch):
                net(stand_in[:min(batch, count - i)])

    return run


def camseg(methods: list[str], names: list[str], modules: dict, net, fuse: str = "mean"):
    requests = [(m, (n,), fuse) for m in methods for n in names]
    return lambda x: cams.many_cams(net, modules, x, requests)


for arch in args.archs:
    model, net = setup(arch)
    x = images(args.batch)
    if args.study:
        names = [models.resolve_layer(arch, n) for n in STUDY_LAYERS]
        modules = {n: models.get_layer(model, arch, n) for n in names}
        mods = list(modules.values())
        gm = list(cams.FAST_METHODS)
        r = race({"camseg": camseg(gm, names, modules, net), "torchcam": torchcam(gm, mods, net),
                  "library": lambda v: [library(m, mods, net)(v) for m in gm],
                  "floor": lambda v: cams.activations_and_gradients(net, mods, v)}, x)
        print(f"{arch:9s} study 5 methods x 3 layers ({', '.join(names)}): camseg {r['camseg']:7.1f} img/s | "
              f"torchcam {r['torchcam']:7.1f} | pytorch-grad-cam {r['library']:7.1f} | floor {r['floor']:7.1f} | "
              f"study ratio camseg/torchcam = {r['camseg'] / r['torchcam']:.2f}, "
              f"camseg/floor = {r['camseg'] / r['floor']:.2f}", flush=True)
        name = models.resolve_layer(arch, args.layer)
        one = {name: models.get_layer(model, arch, args.layer)}
        r = race({"camseg": camseg(["gradcam"], [name], one, net), "torchcam": torchcam(["gradcam"], list(one.values()), net),
                  "floor": lambda v: cams.activations_and_gradients(net, list(one.values()), v)}, x)
        print(f"{arch:9s} single GradCAM @ {name}: camseg {r['camseg']:7.1f} img/s | torchcam {r['torchcam']:7.1f} | "
              f"floor {r['floor']:7.1f} | single ratio camseg/torchcam = {r['camseg'] / r['torchcam']:.2f}", flush=True)
        if arch == "small_cnn":
            early = models.resolve_layer(arch, "early")
            layer = {early: models.get_layer(model, arch, "early")}
            xs = images(args.slow_batch)
            for method in ("eigencam", "scorecam"):
                contenders = {"camseg": camseg([method], [early], layer, net),
                              "library": library(method, list(layer.values()), net)}
                if method == "scorecam":
                    contenders["forwards"] = score_forwards(net, list(layer.values())[0], xs)
                r = race(contenders, xs, repeats=2, warmup=1)
                h1 = cams.fast_cams(net, list(layer.values()), xs, method)[0].cpu().numpy()
                h2 = cam_library.library_cams(net, list(layer.values()), xs, method)[0]
                bound = "" if method != "scorecam" else (
                    f" | its forward passes alone {r['forwards']:8.2f} img/s: no exact ScoreCAM beyond "
                    f"{r['forwards'] / r['library']:.1f} x the library")
                print(f"{arch:9s} {method} @ {early}, {args.size} x {args.size}, batch {len(xs)}: camseg "
                      f"{r['camseg']:8.2f} img/s | pytorch-grad-cam {r['library']:8.2f} | "
                      f"{method} ratio camseg/library = {r['camseg'] / r['library']:.1f} | "
                      f"max |camseg-library| {np.abs(h1 - h2).max():.1e}{bound}", flush=True)
        continue
    layers = [models.get_layer(model, arch, args.layer)]
    for method in args.methods:
        r = race({"fast": lambda v: cams.fast_cams(net, layers, v, method),
                  "library": lambda v: cam_library.library_cams(net, layers, v, method),
                  "floor": lambda v: cams.activations_and_gradients(net, layers, v)}, x)
        h1 = cams.fast_cams(net, layers, x, method)[0].cpu().numpy()
        h2 = cam_library.library_cams(net, layers, x, method)[0]
        print(f"{arch:12s} {method:9s} library {r['library']:8.1f} img/s | fast {r['fast']:8.1f} img/s | floor "
              f"{r['floor']:8.1f} img/s | fast/floor {r['fast'] / r['floor']:.2f} | max |fast-library| "
              f"{np.abs(h1 - h2).max():.1e}", flush=True)
