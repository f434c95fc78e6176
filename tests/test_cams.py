import numpy as np
import pytest
import torch

from camseg_utils import baselines, cam_library, cams, data, gradient_free, heatmap_cache, models, train
from camseg_utils.cams import CamError
from camseg_utils.io import arrays_digest


def _net(arch, seed=0):
    torch.manual_seed(seed)
    m = models.build_model(arch).eval()
    # random BN statistics, so the maps are not trivially flat
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m, cams._Classifier(m, train.Normalise([0.5] * 3, [0.25] * 3)).eval()


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "vgg11_bn", "densenet121"])
@pytest.mark.parametrize("layers,fuse", [(["middle"], "mean"), (["middle", "last"], "mean"), (["middle", "last"], "max")])
def test_fast_path_reproduces_the_library(arch, layers, fuse):
    m, net = _net(arch, seed=len(layers))
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = [models.get_layer(m, arch, name) for name in layers]
    for method in cams.FAST_METHODS:
        h_fast, r_fast, _ = cams.fast_cams(net, targets, x, method, fuse)
        h_lib, r_lib = cam_library.library_cams(net, targets, x, method, fuse)
        assert h_fast.shape == (3, 64, 64)
        assert np.abs(h_fast.numpy() - h_lib).max() <= 1e-4, method
        # raw maps sum many channels in another order: float32 rounding relative to the peak
        assert np.abs(r_fast.numpy() - r_lib).max() <= 1e-3 * max(1e-12, np.abs(r_lib).max()), method
        assert h_fast.min() >= 0 and h_fast.max() <= 1 + 1e-6


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_one_pass_on_channels_last_activations_is_the_library(arch):
    """The heatmap cache runs the model channels-last, and a global-pooling head then hands the last
    block its gradient in the default layout: every gradient method at the three study layers, from
    one pass, must still be the library's."""
    m, net = _net(arch)
    m.to(memory_format=torch.channels_last)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=torch.channels_last)
    names = [models.resolve_layer(arch, n) for n in ("early", "middle", "last")]
    modules = {n: models.get_layer(m, arch, n) for n in names}
    acts, grads, _ = cams.activations_and_gradients(net, [modules[names[-1]]], x)
    assert acts[0].is_contiguous(memory_format=torch.channels_last)
    assert not grads[0].is_contiguous(memory_format=torch.channels_last)  # the case this test is for
    maps, _ = cams.many_cams(net, modules, x, [(mth, (n,), "mean") for mth in cams.FAST_METHODS for n in names])
    assert len(maps) == 15
    for (mth, (name,), _), (heat, raw) in maps.items():
        h_lib, r_lib = cam_library.library_cams(net, [modules[name]], x, mth)
        assert np.abs(heat.numpy() - h_lib).max() <= 1e-4, (mth, name)
        assert np.abs(raw.numpy() - r_lib).max() <= 1e-3 * max(1e-12, np.abs(r_lib).max()), (mth, name)


@pytest.mark.parametrize("src,dst", [((16, 16), (128, 128)), ((7, 5), (64, 48)), ((40, 30), (25, 61)), ((8, 8), (8, 8)),
                                     ((64, 64), (128, 128)), ((32, 32), (128, 128)), ((16, 12), (128, 128))])
def test_separable_resize_is_torch_bilinear(src, dst):
    maps = torch.rand(3, 4, *src, generator=torch.Generator().manual_seed(0))
    ref = torch.nn.functional.interpolate(maps, size=dst, mode="bilinear", align_corners=False)
    # torch places non-integer scales' sample points in float32, the matrices in float64
    assert torch.allclose(cams.separable_resize(maps, dst), ref, atol=1e-5)


@pytest.mark.parametrize("src", [(64, 64), (32, 32), (16, 12)])  # interpolation's side of the switch, then the products'
def test_both_resizing_routes_agree(src):
    maps = torch.rand(2, 3, *src, generator=torch.Generator().manual_seed(0))
    ref = torch.nn.functional.interpolate(maps, size=(128, 128), mode="bilinear", align_corners=False)
    assert torch.allclose(cams.upsize_maps(maps, (128, 128)), ref, atol=1e-5)


def test_fast_path_does_not_touch_weight_gradients():
    m, net = _net("small_cnn")
    cams.fast_cams(net, [models.get_layer(m, "small_cnn", "last")], torch.rand(2, 3, 32, 32), "gradcam")
    assert all(p.grad is None for p in m.parameters())


def test_fast_path_works_on_a_frozen_backbone_and_restores_requires_grad():
    m, net = _net("small_cnn")
    m.block1.requires_grad_(False)
    m.block2.requires_grad_(False)  # the early target layer and everything before it frozen
    flags = [p.requires_grad for p in m.parameters()]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = [models.get_layer(m, "small_cnn", "early"), models.get_layer(m, "small_cnn", "last")]
    frozen = {method: cams.fast_cams(net, targets, x, method)[0] for method in ("gradcam", "layercam")}
    assert [p.requires_grad for p in m.parameters()] == flags
    assert all(p.grad is None for p in m.parameters())
    m.requires_grad_(True)  # pytorch-grad-cam refuses a target layer with frozen weights before it
    for method, h_fast in frozen.items():
        h_lib, _ = cam_library.library_cams(net, targets, x, method)
        assert np.abs(h_fast.numpy() - h_lib).max() <= 1e-4, method


def test_all_zero_map_gives_zeros_not_nan():
    z = cams.minmax(torch.zeros(2, 8, 8))
    assert torch.equal(z, torch.zeros(2, 8, 8))
    m, net = _net("small_cnn")
    with torch.no_grad():
        for p in m.head.fc.parameters():
            p.zero_()  # no gradient reaches any layer: every gradient map is zero
    h, r, _ = cams.fast_cams(net, [models.get_layer(m, "small_cnn", "last")], torch.rand(2, 3, 32, 32), "gradcam")
    assert not torch.isnan(h).any() and torch.equal(h, torch.zeros_like(h))


def test_unknown_method_layer_fusion_list_the_options():
    with pytest.raises(CamError, match="known: gradcam, gradcam\\+\\+"):
        cams.check_method("smoothgrad")
    with pytest.raises(ValueError, match="known: last, middle"):
        cams.parse_layers("resnet18", "layer7")
    assert cams.parse_layers("resnet18", "middle+last") == ["layer3", "layer4"]
    m, net = _net("small_cnn")
    with pytest.raises(CamError, match="fusion"):
        cams.fast_cams(net, [m.block4], torch.rand(1, 3, 32, 32), "gradcam", fuse="median")
    with pytest.raises(CamError, match="engine='turbo'"):
        heatmap_cache.compute_heatmaps(m, net.norm, "small_cnn", np.zeros((1, 32, 32, 3), np.uint8), "scorecam", engine="turbo")
    with pytest.raises(CamError, match="layers must be among"):
        cams.many_cams(net, {"a": m.block4}, torch.rand(1, 3, 32, 32), [("gradcam", ("b",), "mean")])


def test_baselines_are_deterministic_and_in_range():
    a = baselines.random_heatmaps(3, (32, 32), seed=0)
    b = baselines.random_heatmaps(2, (32, 32), seed=0, offset=1)
    assert np.allclose(a[1:], b) and a.min() >= 0 and a.max() <= 1
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0, 8:24, 8:24] = 200
    s = baselines.sobel_heatmaps(img)[0]
    assert s[16, 8] > 0.5 and s[16, 16] == 0  # edges hot, flat areas cold


def test_randomcam_is_reproducible_by_seed_and_leaves_numpy_alone():
    m, _ = _net("small_cnn")
    imgs = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    norm = train.Normalise([0.5] * 3, [0.25] * 3)

    def run(seed):
        return heatmap_cache.compute_heatmaps(m, norm, "small_cnn", imgs, "randomcam", "middle", batch_size=2, seed=seed,
                                     progress=False)[0]

    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a, b, c = run(0), run(0), run(1)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert np.array_equal(np.random.get_state()[1], before)  # the caller's global generator is untouched


def test_cache_computes_once_and_recomputes_for_a_new_checkpoint(tmp_path):
    ds = data.build_dataset("synthetic", image_size=32, n_patients=6, progress=False)
    tr, va = ds.split("train"), ds.split("val")
    cfg = train.TrainConfig(epochs=1, batch_size=16, device="cpu")
    train.train_classifier(tr, va, cfg, tmp_path / "m", progress=False)
    ckpt = tmp_path / "m" / "best.pt"
    h1 = heatmap_cache.cached_heatmaps(tmp_path, ckpt, va.images, "val", "gradcam", "middle", progress=False)
    assert h1.heatmap.dtype == np.float16 and h1.heatmap.shape == va.images.shape[:3]
    entry = next((tmp_path / "heatmaps").glob("small_cnn-*/gradcam__block3__mean__val"))
    mtime = (entry / "meta.json").stat().st_mtime_ns
    h2 = heatmap_cache.cached_heatmaps(tmp_path, ckpt, va.images, "val", "gradcam", "middle", progress=False)
    assert (entry / "meta.json").stat().st_mtime_ns == mtime  # served from the cache
    assert np.array_equal(h1.heatmap, h2.heatmap)
    # the cache agrees with a direct computation (float16 rounding)
    model, norm, _ = train.load_classifier(ckpt)
    direct, raw = heatmap_cache.compute_heatmaps(model, norm, "small_cnn", va.images, "gradcam", "middle", progress=False)
    assert np.abs(direct - h1.heatmap.astype(np.float32)).max() < 2e-3
    assert np.allclose(h1.raw_maps(), raw, atol=2e-3 * raw.max())
    # a new checkpoint (one more epoch) gets a new entry
    train.train_classifier(tr, va, train.TrainConfig(epochs=2, batch_size=16, device="cpu"), tmp_path / "m",
                           resume=False, progress=False)
    heatmap_cache.cached_heatmaps(tmp_path, ckpt, va.images, "val", "gradcam", "middle", progress=False)
    assert len(list((tmp_path / "heatmaps").glob("small_cnn-*"))) == 2
    assert not list((tmp_path / "heatmaps").rglob(".gradcam*"))  # no temporary folders left


def test_check_pair_names_both_shapes():
    with pytest.raises(CamError, match=r"images \(2, 8, 8, 3\) and heatmaps \(3, 8, 8\)"):
        cams.check_pair(np.zeros((2, 8, 8, 3)), np.zeros((3, 8, 8)))


# ------------------------------------------------------------ one pass, many maps

_REQUESTS = [(["early"], "mean"), (["middle", "last"], "mean"), (["middle", "last"], "max")]


def _count_calls(module):
    calls = []
    return calls, module.register_forward_hook(lambda *a: calls.append(1))


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_one_pass_gives_every_map_as_the_single_method_path_and_the_library(arch):
    m, net = _net(arch, seed=3)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    names = {n: models.resolve_layer(arch, n) for n in ("early", "middle", "last")}
    modules = {names[n]: models.get_layer(m, arch, n) for n in names}
    methods = [*cams.FAST_METHODS, "eigencam", "randomcam"]
    requests = [(mth, tuple(names[n] for n in layers), fuse) for mth in methods for layers, fuse in _REQUESTS]
    calls, hook = _count_calls(m)
    try:
        maps, _ = cams.many_cams(net, modules, x, requests, seed=5, offset=2)
    finally:
        hook.remove()
    assert len(calls) == 1  # one forward pass for all 21 maps
    for (mth, layers, fuse), (heat, raw) in maps.items():
        targets = [modules[n] for n in layers]
        h1, r1, _ = cams.fast_cams(net, targets, x, mth, fuse, seed=5, offset=2)
        assert torch.allclose(heat, h1, atol=1e-5) and torch.allclose(raw, r1, rtol=1e-4, atol=1e-6), (mth, layers, fuse)
        with heatmap_cache._numpy_seeded(5, 2):  # RandomCAM: the library's draws under the same seed
            h_lib, r_lib = cam_library.library_cams(net, targets, x, mth, fuse)
        tol = 1e-3 if mth == "eigencam" else 1e-4
        assert np.abs(heat.numpy() - h_lib).max() <= tol, (mth, layers, fuse)
        assert np.abs(raw.numpy() - r_lib).max() <= 1e-3 * max(1e-12, np.abs(r_lib).max()), (mth, layers, fuse)


def test_scorecam_batched_equals_the_library():
    m, net = _net("small_cnn", seed=4)
    with torch.no_grad():  # four dead channels in the early block: all-zero masks, scored once
        m.block2[1].weight[:4] = 0
        m.block2[1].bias[:4] = 0
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for layers, fuse in _REQUESTS:
        targets = [models.get_layer(m, "small_cnn", n) for n in layers]
        heat, raw, _ = cams.fast_cams(net, targets, x, "scorecam", fuse, score_batch=24)  # batches span images
        h_lib, r_lib = cam_library.library_cams(net, targets, x, "scorecam", fuse)
        assert np.abs(heat.numpy() - h_lib).max() <= 1e-4, layers
        assert np.abs(raw.numpy() - r_lib).max() <= 1e-3 * np.abs(r_lib).max(), layers
        assert heat.max() > 0.99  # not an all-zero map


@pytest.mark.parametrize("shape", [(200, 8), (60, 40), (6, 40)])
def test_principal_directions_orient_as_the_full_svd(shape):
    """Every route (QR first, LQ first, neither) gives numpy's full-SVD VT[0], sign included,
    also with dead (all-zero) channels and heavy-tailed post-ReLU data."""
    p, c = shape
    rng = np.random.default_rng(p * c)
    m = np.maximum(rng.standard_normal((24, p, c)).astype(np.float32) * rng.gamma(1, 1, (24, 1, c)).astype(np.float32), 0)
    m[::3, :, 1] = 0  # a dead channel in every third matrix
    m -= m.mean(1, keepdims=True)
    v = gradient_free.principal_directions(torch.from_numpy(m)).numpy()
    for k in range(len(m)):
        ref = np.linalg.svd(m[k], full_matrices=True)[2][0]
        assert np.dot(v[k], ref) > 1 - 1e-4, k  # same direction and the same sign


def test_principal_directions_use_one_blas_thread_and_give_the_others_back():
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    real_qr = np.linalg.qr

    def qr(*a, **k):  # records numpy's BLAS threads while the factorisation runs
        seen.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
        return real_qr(*a, **k)

    with threadpool_limits(2, user_api="blas"):
        before = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
        np.linalg.qr = qr
        try:
            gradient_free.principal_directions(torch.rand(3, 200, 8))
        finally:
            np.linalg.qr = real_qr
        assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == before
    assert seen == [{1}]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_eigencam_orients_as_the_library_on_rank_deficient_activations(layout):
    """A dead channel leaves each image's centred activations rank-deficient, and their orientation
    then hangs on last digits (the means the library centres by, the LAPACK of the QR factor):
    the maps must still be the library's, in either memory layout."""
    torch.manual_seed(0)
    m = models.build_model("small_cnn").eval().to(memory_format=layout)
    with torch.no_grad():
        m.block2[0].weight[21] = 0
        m.block2[1].bias[21] = -1  # after batch norm and ReLU: an all-zero channel
    net = cams._Classifier(m, train.Normalise([0.5] * 3, [0.25] * 3)).eval()
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=layout)
    target = [models.get_layer(m, "small_cnn", "early")]
    fast = cams.fast_cams(net, target, x, "eigencam")[0].numpy()
    lib = cam_library.library_cams(net, target, x, "eigencam")[0]
    assert np.abs(fast - lib).reshape(len(x), -1).max(1).tolist() == pytest.approx([0] * len(x), abs=1e-3)


def _trained(tmp_path):
    ds = data.build_dataset("synthetic", image_size=32, n_patients=6, progress=False)
    tr, va = ds.split("train"), ds.split("val")
    train.train_classifier(tr, va, train.TrainConfig(epochs=1, batch_size=16, device="cpu"), tmp_path / "m",
                           progress=False)
    return ds, tmp_path / "m" / "best.pt"


def test_eigencam_on_trained_activations_equals_the_library(tmp_path):
    ds, ckpt = _trained(tmp_path)
    model, norm, _ = train.load_classifier(ckpt)
    imgs = ds.split("val").images[:24]
    for layer in ("early", "middle", "last"):
        fast = heatmap_cache.compute_heatmaps(model, norm, "small_cnn", imgs, "eigencam", layer, progress=False)
        lib = heatmap_cache.compute_heatmaps(model, norm, "small_cnn", imgs, "eigencam", layer, engine="library", progress=False)
        assert np.abs(fast[0] - lib[0]).max() <= 1e-3, layer


def test_compute_many_fills_every_key_as_compute_heatmaps(tmp_path):
    m, net = _net("small_cnn", seed=1)
    imgs = np.random.default_rng(1).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    got = heatmap_cache.compute_many(m, net.norm, "small_cnn", imgs, ["gradcam", "layercam", "random"], ["middle", "middle+last"],
                            ["mean", "max"], batch_size=2, seed=3, progress=False)
    assert set(got) == {(a, b, c) for a in ("gradcam", "layercam", "random") for b in ("middle", "middle+last")
                        for c in ("mean", "max")}
    for (mth, layers, fuse), (heat, raw) in got.items():
        h1, r1 = heatmap_cache.compute_heatmaps(m, net.norm, "small_cnn", imgs, mth, layers, fuse, batch_size=2, seed=3,
                                       progress=False)
        assert np.allclose(heat, h1, atol=1e-5) and np.allclose(raw, r1, rtol=1e-4, atol=1e-6), (mth, layers, fuse)


# ------------------------------------------------------------------ cache keys


def test_cache_fills_several_methods_in_one_sweep_and_serves_them_singly(tmp_path):
    ds, ckpt = _trained(tmp_path)
    va = ds.split("val")
    model, norm, meta = train.load_classifier(ckpt)
    calls, hook = _count_calls(model)
    loads = []
    try:
        got = heatmap_cache.cached_heatmaps_many(tmp_path, ckpt, va.images, "val", ["gradcam", "hirescam", "random"],
                                        ["middle", "last"], batch_size=64, progress=False,
                                        loader=lambda: loads.append(1) or (model, norm, meta))
    finally:
        hook.remove()
    assert len(loads) == 1 and len(calls) == -(-len(va) // 64)  # one forward pass per batch for 4 CAM entries
    assert len(list((tmp_path / "heatmaps").glob("small_cnn-*/*"))) == 5  # random: one entry for both layers
    one = heatmap_cache.cached_heatmaps(tmp_path, ckpt, va.images, "val", "hirescam", "last", progress=False,
                               loader=lambda: pytest.fail("served from the cache, no model needed"))
    assert np.array_equal(one.heatmap, got[("hirescam", "last", "mean")].heatmap)
    direct = heatmap_cache.compute_heatmaps(model, norm, "small_cnn", va.images, "hirescam", "last", progress=False)[0]
    assert np.abs(direct - one.heatmap.astype(np.float32)).max() < 2e-3


@pytest.mark.parametrize("method", ["random", "randomcam"])
def test_cache_is_keyed_by_the_seed(tmp_path, method):
    ds, ckpt = _trained(tmp_path)
    va = ds.split("val")
    a = heatmap_cache.cached_heatmaps(tmp_path, ckpt, va.images, "val", method, "middle", seed=0, progress=False)
    b = heatmap_cache.cached_heatmaps(tmp_path, ckpt, va.images, "val", method, "middle", seed=1, progress=False)
    assert not np.allclose(np.asarray(a.heatmap, np.float32), np.asarray(b.heatmap, np.float32), atol=1e-2)
    model, norm, _ = train.load_classifier(ckpt)
    direct = heatmap_cache.compute_heatmaps(model, norm, "small_cnn", va.images, method, "middle", seed=1, progress=False)[0]
    assert np.abs(direct - b.heatmap.astype(np.float32)).max() < 2e-3
    assert b.meta["seed"] == 1


def test_cache_is_keyed_by_the_images_content(tmp_path):
    ds, ckpt = _trained(tmp_path)
    va = ds.split("val")
    other = np.ascontiguousarray(va.images[::-1])  # another cohort: same count, size and split name
    a = heatmap_cache.cached_heatmaps(tmp_path, ckpt, va.images, "val", "gradcam", "middle", progress=False)
    a = np.asarray(a.heatmap, np.float32)
    b = heatmap_cache.cached_heatmaps(tmp_path, ckpt, other, "val", "gradcam", "middle", progress=False)
    assert np.abs(np.asarray(b.heatmap, np.float32) - a[::-1]).max() < 2e-3  # its own maps, not the first cohort's
    assert arrays_digest(va.images) != arrays_digest(other)
    assert arrays_digest(va.images) == arrays_digest(np.array(va.images), chunk_bytes=1000)
