import numpy as np
import pytest
from sklearn.metrics import f1_score

from camseg_utils import filtering, metrics
from camseg_utils.cams import CamError
from camseg_utils.masks import head_masks, head_share_masks, mask_counts, scaled_heatmaps, to_masks
from camseg_utils.metrics import MetricError
from camseg_utils.morphology import SegmentError, clean, clean_all, keep_volume_components
from camseg_utils.refinement import guided_filter, refine
from camseg_utils.selection import apply_setting, best_settings, setting_heatmaps, sweep, sweep_settings


def _random_masks(seed, n=20, size=16):
    rng = np.random.default_rng(seed)
    gt = np.zeros((n, size, size), bool)
    for i in range(n):
        if i % 3:  # a third of the slices are tumour-free
            y, x, r = rng.integers(3, size - 3, 3)
            gt[i, max(0, y - r // 2):y + r, max(0, x - r // 2):x + r] = True
    pred = gt.copy()
    flip = rng.random(pred.shape) < 0.1
    return pred ^ flip, gt


def _heatmaps_and_heads(rng, seed, n, signal, noise, outside_cols):
    """Noisy heatmaps brighter on the tumour, their truth, and heads missing the first columns."""
    _, gt = _random_masks(seed, n=n, size=12)
    h = np.clip(gt * signal + rng.random(gt.shape) * noise, 0, 1).astype(np.float32)
    heads = np.ones_like(gt)
    heads[:, :, :outside_cols] = False
    return h, gt, heads


def test_dice_matches_f1_score_of_sklearn():
    pred, gt = _random_masks(0)
    d = metrics.dice(pred, gt)
    for i in range(len(gt)):
        if gt[i].any() or pred[i].any():
            assert d[i] == pytest.approx(f1_score(gt[i].ravel(), pred[i].ravel()))
    has = gt.reshape(len(gt), -1).any(1)
    assert metrics.mean_dice(pred, gt) == pytest.approx(np.mean([f1_score(gt[i].ravel(), pred[i].ravel())
                                                                 for i in np.flatnonzero(has)]))


def test_empty_mask_conventions():
    e = np.zeros((4, 4), bool)
    f = e.copy()
    f[1, 1] = True
    assert np.isnan(metrics.dice(e, e))  # nothing to find, nothing found: undefined
    assert metrics.dice(e, f) == 0.0  # a tumour missed entirely
    assert np.isnan(metrics.mean_dice(np.stack([f, f]), np.stack([e, e])))  # no tumour slice: NaN, not an error
    assert metrics.false_positive_area(np.stack([f]), np.stack([e])) == pytest.approx(1 / 16)


def test_patient_dice_pools_slices_and_iou():
    gt = np.zeros((2, 4, 4), bool)
    gt[0, :2] = True
    pred = np.zeros_like(gt)
    pred[0, :1] = True
    pred[1, :1] = True  # a false positive on the other slice of the same patient
    pd_ = metrics.patient_dice(pred, gt, np.array(["a", "a"]))
    assert pd_["a"] == pytest.approx(2 * 4 / (8 + 8))
    assert metrics.iou(pred[0], gt[0]) == pytest.approx(0.5)
    assert metrics.two_class_mean_dice(pred[:1], gt[:1]) == pytest.approx((2 * 4 / 12 + 2 * 8 / 20) / 2)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(MetricError, match=r"\(2, 4, 4\).*\(2, 5, 5\)"):
        metrics.dice(np.zeros((2, 4, 4), bool), np.zeros((2, 5, 5), bool))


def test_threshold_free_localisation():
    gt = np.zeros((2, 8, 8), bool)
    gt[:, 2:4, 2:4] = True
    h = np.zeros((2, 8, 8), np.float32)
    h[0, 3, 3] = 1  # peak inside
    h[1, 6, 6] = 1  # peak outside
    assert metrics.pointing_game(h, gt) == 0.5
    assert metrics.mass_inside(h, gt) == 0.5
    assert metrics.pixel_average_precision(gt.astype(np.float32), gt) == pytest.approx(1.0)


def test_bootstrap_ci_resamples_patients():
    vals = np.r_[np.full(10, 0.2), np.full(10, 0.8)]
    pats = np.r_[np.repeat(["a"], 10), np.repeat(["b"], 10)]
    lo, hi = metrics.bootstrap_ci(vals, pats, n_boot=500, seed=0)
    assert lo == pytest.approx(0.2) and hi == pytest.approx(0.8)  # two patients: all-a, all-b are possible
    same = metrics.bootstrap_ci(np.full(20, 0.5), pats)
    assert same == pytest.approx((0.5, 0.5))


def test_rules_gates_and_cleanup():
    h = np.zeros((2, 10, 10), np.float32)
    h[:, 2:5, 2:5] = 0.9
    h[:, 8, 8] = 0.95  # an isolated speck
    head = np.zeros((2, 10, 10), bool)
    head[:, :, :7] = True
    m = to_masks(h, "threshold", 0.5)
    assert m[0].sum() == 10
    assert to_masks(h, "threshold", 0.5, heads=head)[0].sum() == 9  # outside the head removed
    assert to_masks(h, "threshold", 0.5, cleanup=True)[0].sum() == 9 - 4  # opening shaves the corners
    assert to_masks(h, "otsu")[0].sum() == 10
    assert to_masks(h, "top_k", 1)[0].sum() == 1 and to_masks(h, "top_k", 1)[0, 8, 8]
    gated = to_masks(h, "threshold", 0.5, probs=np.array([0.9, 0.1]), prob_gate=0.5)
    assert gated[0].any() and not gated[1].any()
    assert not to_masks(np.zeros((1, 4, 4), np.float32), "otsu").any()


def test_bad_segmentation_input():
    h = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(SegmentError, match=r"threshold=1.5: expected a value in \[0, 1\]"):
        to_masks(h, "threshold", 1.5)
    with pytest.raises(SegmentError, match="unknown rule"):
        to_masks(h, "kmeans")
    with pytest.raises(SegmentError, match="differ in shape"):
        to_masks(h, heads=np.zeros((1, 5, 5), bool))
    with pytest.raises(SegmentError, match="no tumour slice"):
        sweep(h, np.zeros((1, 4, 4), bool), None, None, [0.5], [5])
    with pytest.raises(SegmentError, match=r"top_k value=150: expected a percentage in \(0, 100\]"):
        to_masks(h, "top_k", 150)
    with pytest.raises(SegmentError, match="top_k value=0"):
        mask_counts(h, np.ones((1, 4, 4), bool), [0.5], [0])


def test_head_mask_fills_holes():
    img = np.zeros((1, 9, 9, 3), np.uint8)
    img[0, 1:8, 1:8] = 100
    img[0, 4, 4] = 0  # a dark ventricle inside the head
    head = head_masks(img)
    assert head[0, 4, 4] and head.sum() == 49


def test_filters():
    img = np.full((1, 4, 4, 3), 200, np.uint8)
    h = np.zeros((1, 4, 4), np.float32)
    h[0, 0, 0], h[0, 0, 1] = 1.0, 0.5
    assert filtering.filter_images(img, h, "keep_hot")[0, 0, 1, 0] == 100
    assert filtering.filter_images(img, h, "keep_dark")[0, 0, 0, 0] == 0
    kept = filtering.filter_images(img, h, "keep", 12.5, fill=np.array([10, 20, 30]))
    assert (kept[0, 0, :2] == 200).all() and (kept[0, 1, 1] == [10, 20, 30]).all()
    removed = filtering.filter_images(img, h, "remove", 12.5, fill=np.array([10, 20, 30]))
    assert (removed[0, 0, :2] == [10, 20, 30]).all() and (removed[0, 3, 3] == 200).all()
    assert filtering.top_k_mask(np.random.rand(3, 10, 10), 30).reshape(3, -1).sum(1).tolist() == [30, 30, 30]
    with pytest.raises(CamError, match=r"images \(1, 4, 4, 3\) and heatmaps \(2, 4, 4\)"):
        filtering.filter_images(img, np.zeros((2, 4, 4)), "keep_hot")
    with pytest.raises(ValueError, match="unknown filter"):
        filtering.filter_images(img, h, "blur")


def test_vectorised_threshold_counts_equal_the_masks_one_by_one():
    h, gt, heads = _heatmaps_and_heads(np.random.default_rng(3), 1, 30, 0.5, 0.6, 2)
    ts = [0.1, 0.3, 0.5, 0.7, 0.9]
    for hd in (None, heads):
        inter, size = mask_counts(h, gt, ts, (), hd, chunk=7)
        for j, t in enumerate(ts):
            m = to_masks(h, "threshold", t, hd)
            assert np.array_equal(inter[:, j], (m & gt).sum((1, 2)))
            assert np.array_equal(size[:, j], m.sum((1, 2)))


def test_fast_sweep_equals_masks_one_by_one():
    rng = np.random.default_rng(4)
    h, gt, heads = _heatmaps_and_heads(rng, 2, 24, 0.4, 0.7, 3)
    probs = rng.random(len(gt))
    patients = np.repeat(["p1", "p2", "p3"], 8)
    rows = sweep(h, gt, heads, probs, [0.2, 0.6], [2, 10], (False, True), (0.0, 0.5), (False, True), patients,
                         cleanup_candidates=None)
    assert len(rows) == 2 * 2 * 2 * (2 + 1 + 2)
    for r in rows:
        m = to_masks(h, r["rule"], r["value"], heads if r["head_gate"] else None, probs, r["prob_gate"],
                             r["cleanup"])
        assert r["mean_dice"] == pytest.approx(metrics.mean_dice(m, gt)), r
        assert r["patient_dice"] == pytest.approx(metrics.patient_dice(m, gt, patients).mean()), r
    for k, m in zip([1, 5, 50], head_share_masks(h, [1, 5, 50], heads)):
        for i in range(len(h)):  # the k % highest values inside the head, zeros never selected
            vals = np.sort(h[i][heads[i]])[::-1]
            cut = vals[max(1, round(vals.size * k / 100)) - 1]
            assert np.array_equal(m[i], (h[i] >= cut) & (h[i] > 0) & heads[i])


def test_sweep_tries_cleanup_on_the_best_settings_only():
    h, gt, heads = _heatmaps_and_heads(np.random.default_rng(5), 2, 24, 0.4, 0.7, 0)
    patients = np.repeat(["p1", "p2", "p3"], 8)
    args = (h, gt, heads, None, [0.2, 0.4, 0.6], [2, 10], (False, True), (0.0,))
    full = sweep(*args, (False, True), patients, cleanup_candidates=None)
    for by in ("mean_dice", "patient_dice"):
        rows = sweep(*args, (False, True), patients, select_by=by, cleanup_candidates=3)
        plain = [r for r in rows if not r["cleanup"]]
        cleaned = [r for r in rows if r["cleanup"]]
        assert len(plain) == 2 * 6 and len(cleaned) == 3
        best3 = sorted(plain, key=lambda r: -r[by])[:3]
        assert {(r["rule"], r["value"], r["head_gate"]) for r in cleaned} == \
            {(r["rule"], r["value"], r["head_gate"]) for r in best3}
        for r in cleaned:  # the same numbers as the exhaustive sweep
            assert r in full
    only = sweep(*args, (True,), patients, cleanup_candidates=None)
    assert only and all(r["cleanup"] for r in only)
    with pytest.raises(SegmentError, match="select_by"):
        sweep(*args, (False,), None, select_by="patient_dice")


def _clean_one_by_one(m):
    """Independent reference: scipy's opening and labelling, slice by slice."""
    from scipy import ndimage

    o = ndimage.binary_opening(m)
    lab, n = ndimage.label(o)
    return o if n <= 1 else lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))


def test_stack_cleanup_equals_scipy_slice_by_slice():
    rng = np.random.default_rng(6)
    from scipy import ndimage

    masks = ndimage.binary_dilation(rng.random((40, 24, 24)) > 0.93, np.ones((1, 3, 3)))
    masks[0] = False  # an empty slice
    masks[1] = False
    masks[1, 2:5, 2:5] = masks[1, 10:13, 10:13] = True  # two components of equal size: the first is kept
    masks[2] = True  # touching the border
    out = clean_all(masks)
    for m, o in zip(masks, out):
        assert np.array_equal(o, _clean_one_by_one(m))
    assert np.array_equal(clean(masks[3]), out[3])
    assert clean_all(np.zeros((0, 4, 4), bool)).shape == (0, 4, 4)


def _guided_reference(p, g, r, eps):
    """He et al.'s guided filter written out window by window (windows clipped at the border)."""
    n, h, w = p.shape

    def box(x):
        out = np.empty_like(x)
        for y in range(h):
            for c in range(w):
                out[:, y, c] = x[:, max(0, y - r):y + r + 1, max(0, c - r):c + r + 1].mean((1, 2))
        return out

    mg, mp = box(g), box(p)
    a = (box(g * p) - mg * mp) / (box(g * g) - mg * mg + eps)
    b = mp - a * mg
    return box(a) * g + box(b)


def test_guided_filter_matches_a_window_by_window_reference():
    rng = np.random.default_rng(11)
    p, g = rng.random((3, 9, 11)), rng.random((3, 9, 11))
    for r, eps in ((1, 1e-3), (2, 1e-2), (6, 1e-3)):
        ref = _guided_reference(p.astype(np.float64), g.astype(np.float64), r, eps)
        assert np.allclose(guided_filter(p, g, r, eps, chunk=2), ref, atol=1e-4)
    # linear in the map; a flat guide reduces it to a (doubly) smoothed map; the guide itself passes through
    out = guided_filter(p, g, 2)
    assert np.allclose(guided_filter(3 * p, g, 2), 3 * out, atol=1e-5)
    both = guided_filter((p, 3 * p), g, 2, chunk=2)  # maps sharing one guide come back together
    assert np.allclose(both[0], out, atol=1e-6) and np.allclose(both[1], 3 * out, atol=1e-5)
    flat = guided_filter(p, np.full_like(g, 0.5), 2)
    assert np.allclose(flat, _guided_reference(p, np.full_like(g, 0.5), 2, 1e-3), atol=1e-5)
    assert np.allclose(guided_filter(g, g, 2, eps=1e-8), g, atol=1e-3)
    with pytest.raises(SegmentError, match=r"\(3, 9, 11\) and guide \(3, 9, 10\)"):
        guided_filter(p, g[..., :10], 2)
    with pytest.raises(SegmentError, match="radius=0"):
        guided_filter(p, g, 0)
    with pytest.raises(SegmentError, match="eps"):
        guided_filter(p, g, 1, eps=0)


def _blurred_disks(n=6, size=40, seed=0):
    """Images with a bright disk in the FLAIR channel, its mask, and a coarse heatmap: the disk seen
    through an 8 x 8 grid and blown up again, as a CAM from a coarse layer is."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    gt = np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                   for cy, cx, r in zip(rng.integers(12, 28, n), rng.integers(12, 28, n), rng.integers(5, 9, n))])
    images = np.full((n, size, size, 3), 60, np.uint8)
    images[..., 1][gt] = 200
    coarse = F.adaptive_avg_pool2d(torch.from_numpy(gt[:, None].astype(np.float32)), 5)
    heat = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    return images, gt, heat


def test_refine_redraws_a_coarse_heatmap_along_the_image_edges():
    from camseg_utils.heatmap_cache import Heatmaps

    images, gt, heat = _blurred_disks()
    peak = heat.reshape(len(heat), -1).max(1)
    hm = Heatmaps(heat / heat.reshape(len(heat), -1).max(1)[:, None, None], heat / peak[:, None, None], peak, {})
    assert refine(hm, images, 0) is hm
    fine = refine(hm, images, 4, channel=1)
    assert fine.heatmap.min() >= 0 and fine.heatmap.max() <= 1 and fine.meta["guided_radius"] == 4
    assert np.allclose(fine.raw_maps().max((1, 2)), fine.raw_peak)
    plain = max(metrics.mean_dice(to_masks(hm.heatmap, "threshold", t), gt) for t in np.arange(0.1, 1, 0.1))
    refined = max(metrics.mean_dice(to_masks(fine.heatmap, "threshold", t), gt) for t in np.arange(0.1, 1, 0.1))
    assert refined > plain + 0.05, (plain, refined)
    # the mean of the channels as guide sees a weaker edge (contrast 47 instead of 140 grey levels): the
    # heatmap's step across the tumour border grows less than with FLAIR alone, yet more than unrefined
    from scipy import ndimage

    mean_guided = refine(hm, images, 4, channel=-1)
    assert mean_guided.heatmap.shape == heat.shape
    inner = gt & ~ndimage.binary_erosion(gt, np.ones((1, 5, 5)))
    ring = ndimage.binary_dilation(gt, np.ones((1, 5, 5))) & ~gt
    step = [h.heatmap[inner].mean() - h.heatmap[ring].mean() for h in (hm, mean_guided, fine)]
    assert step[0] + 0.2 < step[1] < step[2] - 0.02, step
    # an all-zero map stays zero, never NaN
    zero = Heatmaps(np.zeros_like(heat), np.zeros_like(heat), np.zeros(len(heat), np.float32), {})
    z = refine(zero, images, 4)
    assert not np.isnan(z.heatmap).any() and not z.heatmap.any() and not z.raw_maps().any()
    with pytest.raises(SegmentError, match="guide channel=3"):
        refine(hm, images, 4, channel=3)
    with pytest.raises(CamError, match="do not match"):
        refine(hm, images[:2], 4)
    setting = {"rule": "threshold", "value": 0.5, "normalisation": "per_image", "head_gate": False, "prob_gate": 0.0,
               "cleanup": False, "guided_radius": 4}
    with pytest.raises(SegmentError, match="radius 4.*pass the images"):
        apply_setting(hm, setting)
    assert np.array_equal(apply_setting(hm, setting, images=images), fine.heatmap >= 0.5)
    # heatmaps refined as the setting says are used as they are, not refined twice (no images needed)
    assert setting_heatmaps(fine, setting) is fine
    assert np.array_equal(apply_setting(fine, setting), fine.heatmap >= 0.5)


def test_sweep_settings_covers_radii_and_scales_and_picks_per_refinement():
    from camseg_utils.heatmap_cache import Heatmaps

    images, gt, heat = _blurred_disks(n=8, seed=1)
    peak = heat.reshape(len(heat), -1).max(1)
    hm = Heatmaps(heat / peak[:, None, None], heat / peak[:, None, None], peak, {})
    heads = np.ones_like(gt)
    args = (hm, images, gt, heads, None, [0.3, 0.5], [10])
    rows = sweep_settings(*args, guided_radii=(0, 2, 4), head_gates=(True,), prob_gates=(0.0,))
    assert len(rows) == 3 * 2 * (2 + 1 + 1)
    assert {r["refinement"] for r in rows if r["guided_radius"] == 0} == {"none"}
    assert {r["refinement"] for r in rows if r["guided_radius"] > 0} == {"guided"}
    plain = sweep(scaled_heatmaps(hm, "per_image"), gt, heads, None, [0.3, 0.5], [10], (True,), (0.0,))
    assert [r["mean_dice"] for r in rows[:len(plain)]] == [r["mean_dice"] for r in plain]
    best = best_settings(rows)
    assert list(best) == ["none", "guided"]
    for kind, b in best.items():
        assert b["mean_dice"] == max(r["mean_dice"] for r in rows if r["refinement"] == kind)
        masks = apply_setting(hm, b, heads, images=images)  # the row alone reproduces its number
        assert metrics.mean_dice(masks, gt) == pytest.approx(b["mean_dice"])
    assert best["guided"]["mean_dice"] > best["none"]["mean_dice"]
    with pytest.raises(SegmentError, match="guided_radii"):
        sweep_settings(*args, guided_radii=(0, 1.5))


def test_volume_cleanup_keeps_components_by_size_across_neighbouring_slices():
    # One scan of 4 slices listed out of order (slice numbers 3, 1, 4, 2) and a second scan.
    masks = np.zeros((6, 10, 10), bool)
    slices = np.array([3, 1, 4, 2, 1, 2])
    volumes = np.array(["a", "a", "a", "a", "b", "b"])
    masks[1, 2:6, 2:6] = masks[3, 2:6, 2:6] = masks[0, 3:5, 3:5] = True  # slices 1-3: one blob of 36 voxels
    masks[2, 5:7, 5:7] = True  # slice 4, 4 voxels: touches slice 3's part only diagonally, so a component of its own
    masks[1, 8, 0] = True  # a speck of 1 voxel on slice 1
    masks[4, 0:2, 0:2] = True  # scan b: 4 voxels, alone in its scan
    masks[5, 5, 5] = True
    keep_all = keep_volume_components(masks, volumes, slices, 0.0)
    assert np.array_equal(keep_all, masks) and keep_all is not masks
    largest = keep_volume_components(masks, volumes, slices, 1.0)
    expect = np.zeros_like(masks)
    expect[1, 2:6, 2:6] = expect[3, 2:6, 2:6] = expect[0, 3:5, 3:5] = True
    expect[4, 0:2, 0:2] = True
    assert np.array_equal(largest, expect)
    tenth = keep_volume_components(masks, volumes, slices, 0.1)  # a: keeps 4 of 36, drops 1; b: keeps 1 of 4
    expect[2, 5:7, 5:7] = expect[5, 5, 5] = True
    assert np.array_equal(tenth, expect)


def test_volume_cleanup_equals_skimage_labelling_per_scan():
    from skimage.measure import label

    rng = np.random.default_rng(3)
    masks = rng.random((30, 12, 12)) > 0.7
    volumes = rng.integers(0, 3, 30)
    slices = rng.permutation(30)
    for frac in (0.2, 1.0):
        out = keep_volume_components(masks, volumes, slices, frac)
        for v in range(3):
            idx = np.flatnonzero(volumes == v)
            idx = idx[np.argsort(slices[idx])]
            lab = label(masks[idx], connectivity=1)  # face neighbours only, as ours
            sizes = np.bincount(lab.ravel())[1:]
            want = np.isin(lab, 1 + np.flatnonzero(sizes >= frac * sizes.max()))
            assert np.array_equal(out[idx], want)


def test_volume_cleanup_bad_input():
    m = np.zeros((2, 4, 4), bool)
    with pytest.raises(SegmentError, match="min_fraction=1.5"):
        keep_volume_components(m, [0, 0], [1, 2], 1.5)
    with pytest.raises(SegmentError, match="one volume id and slice number per slice"):
        keep_volume_components(m, [0], [1, 2], 1.0)


@pytest.mark.parametrize("shape", [(30, 17, 23), (3, 1, 5), (2, 2, 2), (4, 6, 1)])
def test_opening_by_shifts_equals_scipy(shape):
    from scipy import ndimage

    from camseg_utils.morphology import _SLICE_CROSS, _open_cross

    rng = np.random.default_rng(sum(shape))
    for density in (0.3, 0.6, 0.9, 1.0):
        masks = rng.random(shape) < density
        assert np.array_equal(_open_cross(masks), ndimage.binary_opening(masks, _SLICE_CROSS)), density


def test_box_mean_by_shifted_sums_equals_an_explicit_window_mean():
    import torch

    from camseg_utils.refinement import _box1d

    torch.manual_seed(0)
    for shape in [(3, 7, 9), (2, 1, 4), (2, 5, 30)]:
        x = torch.rand(shape, dtype=torch.float64)
        for r in (1, 2, 4, 16, 40):  # also windows wider than the image
            for dim in (1, 2):
                n = x.shape[dim]
                want = torch.stack([x.narrow(dim, max(i - r, 0), min(i + r + 1, n) - max(i - r, 0)).mean(dim)
                                    for i in range(n)], dim)
                assert torch.allclose(_box1d(x, r, dim), want, atol=1e-12), (shape, r, dim)
