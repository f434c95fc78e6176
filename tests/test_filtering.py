"""Heatmap filters: noisy linear imputation against hand-solved cases, and the shape-only images."""

import numpy as np
import pytest

from camseg_utils import filtering


def _grey(values) -> np.ndarray:
    """One slice, the same values in all three channels: 1 x H x W x 3 float."""
    v = np.asarray(values, np.float64)
    return np.repeat(v[None, ..., None], 3, axis=-1)


def test_one_removed_pixel_is_the_weighted_mean_of_its_neighbours():
    # centre removed; its neighbours: edge ones weigh 1/6, diagonal ones 1/12.
    # Only the top-left (diagonal) neighbour is 12 -> the centre is 12 / 12 = 1 by hand.
    img = _grey([[12, 0, 0], [0, 99, 0], [0, 0, 0]])
    removed = np.zeros((1, 3, 3), bool)
    removed[0, 1, 1] = True
    out = filtering.noisy_linear_imputation(img, removed, noise=0)
    assert out[0, 1, 1] == pytest.approx([1.0, 1.0, 1.0])
    assert np.array_equal(np.delete(out[0].reshape(9, 3), 4, 0), np.delete(img[0].reshape(9, 3), 4, 0))


def test_two_coupled_removed_pixels_solved_by_hand():
    # [[a, b, 3], [4, 5, 6], [7, 8, 9]], a and b removed. Weights inside the image (edge 2, diagonal 1):
    #   a: 5a = 2b + 2*4 + 1*5               ->  5a = 2b + 13
    #   b: 8b = 2a + 2*3 + 2*5 + 1*4 + 1*6   ->  8b = 2a + 26
    # so 40b = 4b + 26 + 130, b = 13/3, and a = (26/3 + 13) / 5 = 13/3.
    img = _grey([[0, 0, 3], [4, 5, 6], [7, 8, 9]])
    img[0, 0, 0] = [50, 60, 70]  # whatever a removed pixel held does not matter
    removed = np.zeros((1, 3, 3), bool)
    removed[0, 0, :2] = True
    out = filtering.noisy_linear_imputation(img, removed, noise=0)
    assert out[0, 0, 0] == pytest.approx([13 / 3] * 3, abs=1e-5)
    assert out[0, 0, 1] == pytest.approx([13 / 3] * 3, abs=1e-5)


def test_each_channel_and_slice_solved_on_its_own_whatever_the_chunk():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (5, 9, 7, 3))
    removed = rng.random((5, 9, 7)) < 0.4
    a = filtering.noisy_linear_imputation(img, removed, noise=0, chunk=2)
    b = filtering.noisy_linear_imputation(img, removed, noise=0, chunk=64)
    assert np.allclose(a, b, atol=1e-4)
    assert np.array_equal(a[~removed], img[~removed].astype(np.float32))
    # the result satisfies the defining equation at every removed pixel: value = weighted mean of neighbours
    pad = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
    inside = np.pad(np.ones(a.shape[:3]), ((0, 0), (1, 1), (1, 1)))[..., None]
    tot, wsum = 0, 0
    for dy, dx, w in filtering.NEIGHBOURS:
        sl = (slice(None), slice(1 + dy, 1 + dy + 9), slice(1 + dx, 1 + dx + 7))
        tot, wsum = tot + w * pad[sl], wsum + w * inside[sl]
    assert np.allclose((tot / wsum)[removed], a[removed], atol=1e-3)


def test_a_linear_ramp_is_imputed_exactly_inside_the_image():
    yy, xx = np.mgrid[:20, :20]
    img = _grey(3.0 * xx + 2.0 * yy + 10)
    removed = np.zeros((1, 20, 20), bool)
    removed[0, 5:15, 4:12] = True  # away from the border, where the stencil is symmetric
    out = filtering.noisy_linear_imputation(img, removed, noise=0)
    assert np.allclose(out, img, atol=1e-3)


def test_noise_is_added_to_removed_pixels_only_and_is_seeded():
    img = _grey(np.full((30, 30), 100.0))
    removed = np.zeros((1, 30, 30), bool)
    removed[0, 5:25, 5:25] = True
    a = filtering.noisy_linear_imputation(img, removed, noise=0.02, seed=1)
    assert np.array_equal(a[0][~removed[0]], img[0][~removed[0]])
    assert np.std(a[0][removed[0]] - 100) == pytest.approx(0.02 * 255, rel=0.1)
    assert np.array_equal(a, filtering.noisy_linear_imputation(img, removed, noise=0.02, seed=1))
    assert not np.array_equal(a, filtering.noisy_linear_imputation(img, removed, noise=0.02, seed=2))


def test_a_slice_with_nothing_kept_needs_an_empty_fill():
    img = _grey(np.full((4, 4), 9.0))
    removed = np.ones((1, 4, 4), bool)
    with pytest.raises(ValueError, match="keep no pixel.*empty_fill"):
        filtering.noisy_linear_imputation(img, removed)
    out = filtering.noisy_linear_imputation(img, removed, empty_fill=np.array([1, 2, 3]))
    assert (out[0] == [1, 2, 3]).all()
    with pytest.raises(ValueError, match="N x H x W x 3"):
        filtering.noisy_linear_imputation(img[..., 0], removed)


def test_hard_filters_with_the_imputed_fill():
    yy, xx = np.mgrid[:12, :12]
    img = np.repeat((10 * xx + 5)[None, ..., None], 3, -1).astype(np.uint8)
    h = np.zeros((1, 12, 12), np.float32)
    h[0, 4:8, 4:8] = 1.0  # the hottest 16 of 144 pixels
    k = 100 * 16 / 144
    fill = np.array([0, 0, 0])
    mean = filtering.filter_images(img, h, "remove", k, fill)
    nli = filtering.filter_images(img, h, "remove", k, fill, imputation="nli", noise=0)
    assert (mean[0, 4:8, 4:8] == 0).all()
    assert np.abs(nli.astype(int) - img).max() <= 1  # the ramp continues through the removed square
    kept = filtering.filter_images(img, h, "keep", k, fill, imputation="nli", noise=0)
    assert np.array_equal(kept[0, 4:8, 4:8], img[0, 4:8, 4:8])
    with pytest.raises(ValueError, match="imputation='blur'"):
        filtering.filter_images(img, h, "keep", k, fill, imputation="blur")
    with pytest.raises(ValueError, match="needs fill"):
        filtering.filter_images(img, h, "keep", k)


def test_shape_images_carry_the_mask_or_weight_map_only():
    h = np.zeros((2, 4, 4), np.float32)
    h[:, 0, 0], h[:, 0, 1] = 1.0, 0.5
    mask = filtering.shape_images(h, "keep", 12.5)
    assert mask.shape == (2, 4, 4, 3) and mask.dtype == np.uint8
    assert (mask[:, 0, :2] == 255).all() and mask.sum() == 2 * 2 * 3 * 255
    assert np.array_equal(filtering.shape_images(h, "remove", 12.5), 255 - mask)
    assert filtering.shape_images(h, "keep_hot")[0, 0, 1, 0] == 128
    assert filtering.shape_images(h, "keep_dark")[0, 0, 0, 0] == 0
    with pytest.raises(ValueError, match="unknown filter"):
        filtering.shape_images(h, "blur")


def test_conditions_list_every_filter_k_and_fill():
    c = filtering.conditions([10, 50], ["mean", "nli"])
    assert c[:2] == [("keep_hot", 0.0, "-"), ("keep_dark", 0.0, "-")]
    assert len(c) == 2 + 2 * 2 * 2 and ("remove", 50.0, "nli") in c
    with pytest.raises(ValueError, match="imputations"):
        filtering.conditions([10], ["median"])
