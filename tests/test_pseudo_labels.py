"""Pseudo-masks and the U-Net trained on them: the band and self-training rules and the loss on hand-made
arrays, and a study that reads no drawn mask of the training split."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from camseg_utils import data, pseudo_study
from camseg_utils.pseudo_labels import (
    PseudoLabelError,
    Targets,
    as_ensemble,
    band_targets,
    kept_slices,
    load_network,
    load_networks,
    network_masks,
    probability_maps,
    redraw,
    self_training_targets,
)
from camseg_utils.train import Normalise
from camseg_utils.unet import UNet, segmentation_loss

T, F_ = True, False


# ------------------------------------------------------------------ the uncertain band


def test_band_ignores_the_values_between_the_cuts_and_keeps_the_rest():
    # slice 0: mask = values >= 0.45 except a speck at 0.9 that the setting's clean-up removed; cut c = 0.45,
    # band 0.2: [0.36, 0.54) ignored. Slice 1: the same values, but not kept (tumour-free label or call).
    v = np.array([[0.1, 0.38, 0.45, 0.5, 0.8, 1.0, 0.9]], np.float32)
    m = np.array([[F_, F_, T, T, T, T, F_]])
    values, masks = np.stack([v, v]), np.stack([m, m])
    t = band_targets(values, masks, np.array([True, False]), 0.2)
    assert t.mask[0, 0].tolist() == [F_, F_, F_, F_, T, T, F_]  # the removed speck stays background
    assert t.ignore[0, 0].tolist() == [F_, T, T, T, F_, F_, F_]
    assert not t.mask[1].any() and not t.ignore[1].any()
    plain = band_targets(values, masks, np.array([True, False]), 0.0)
    assert (plain.mask == masks & np.array([True, False])[:, None, None]).all() and not plain.ignore.any()


def test_band_never_ignores_the_mask_peak_and_skips_empty_slices():
    # cut 0.46, band 0.5: the upper cut 0.69 lies above the mask's peak 0.5, so it falls to the peak
    values = np.array([[[0.2, 0.46, 0.5]], [[0.3, 0.3, 0.3]]], np.float32)
    masks = np.array([[[F_, T, T]], [[F_, F_, F_]]])
    t = band_targets(values, masks, np.array([True, True]), 0.5)
    assert t.mask[0, 0].tolist() == [F_, F_, T] and t.ignore[0, 0].tolist() == [F_, T, F_]
    assert not t.mask[1].any() and not t.ignore[1].any()  # no mask, no band


def test_self_training_targets_ignore_the_unsure_part_of_the_networks_mask():
    probs = np.array([[[0.1, 0.3, 0.5, 0.6, 0.9]], [[0.1, 0.3, 0.5, 0.6, 0.9]], [[0.2, 0.45, 0.3, 0.1, 0.0]],
                      [[0.45, 0.46, 0.47, 0.55, 0.95]]], np.float32)
    t = self_training_targets(probs, np.array([True, False, True, True]), 0.4)  # ignored: [0.5, 0.7)
    assert t.mask[0, 0].tolist() == [F_, F_, F_, F_, T]
    assert t.ignore[0, 0].tolist() == [F_, F_, T, T, F_]  # what it calls background stays background
    assert not t.mask[1].any() and not t.ignore[1].any()  # a slice not kept stays empty
    assert not t.mask[2].any() and not t.ignore[2].any()  # nothing the network calls tumour: nothing unsure
    # a briefly trained network's background just below 0.5 is not swallowed by the band
    assert t.ignore[3, 0].tolist() == [F_, F_, F_, T, F_] and t.mask[3, 0].tolist() == [F_, F_, F_, F_, T]
    assert self_training_targets(probs, np.ones(4, bool), 0.0).mask[0, 0].tolist() == [F_, F_, T, T, T]


def test_kept_slices_need_the_label_and_with_a_gate_the_classifiers_call():
    labels, probs = np.array([T, T, F_, F_]), np.array([0.9, 0.2, 0.9, 0.1])
    assert kept_slices(labels, probs).tolist() == [T, T, F_, F_]  # the label alone
    assert kept_slices(labels, probs, 0.5).tolist() == [T, F_, F_, F_]
    with pytest.raises(PseudoLabelError, match="one of each per slice"):
        kept_slices(np.array([T, F_]), np.array([0.9]))
    with pytest.raises(PseudoLabelError, match=r"gate=1\.5: expected a probability"):
        kept_slices(labels, probs, 1.5)


# ------------------------------------------------------------------ the intensity re-draw


def _slice(flair: np.ndarray) -> np.ndarray:
    """A uint8 H x W x 3 image whose FLAIR channel (1) is ``flair`` and whose other channels are dark."""
    img = np.zeros(flair.shape + (3,), np.uint8)
    img[..., 1] = flair
    return img


def test_redraw_grows_the_mask_over_the_bright_region_it_touches_and_no_further():
    yy, xx = np.mgrid[:48, :48]
    head = (yy - 24) ** 2 + (xx - 24) ** 2 < 22 ** 2
    tumour = (yy - 20) ** 2 + (xx - 20) ** 2 < 7 ** 2
    other = (yy - 34) ** 2 + (xx - 34) ** 2 < 3 ** 2  # bright too, but apart from the mask
    flair = np.where(head, 80, 0) + np.where(tumour | other, 120, 0)
    mask = (abs(yy - 20) <= 2) & (abs(xx - 20) <= 2)  # a coarse heatmap mask inside the tumour
    images = np.stack([_slice(flair)] * 3)
    masks = np.stack([mask, mask, np.zeros_like(mask)])
    heads = np.stack([head] * 3)
    out = redraw(masks, images, heads, 0.5, 8)
    assert out[0].sum() > 3 * mask.sum() and not (out[0] & other).any() and (out[0] <= head).all()
    assert (out[0] ^ tumour).sum() < 0.1 * tumour.sum()  # the tumour's outline, to a pixel's smoothing
    assert out[2].sum() == 0  # no mask: nothing to re-draw
    assert redraw(masks, images, heads, 0.5, 1)[0].sum() < out[0].sum()  # the radius bounds the reach
    dark = np.stack([_slice(np.where(head, 80, 0) - np.where(tumour, 40, 0))] * 3)
    assert (redraw(masks, dark, heads, 0.5, 8) == masks).all()  # no brighter than the head: kept as it was


def test_bad_redraws_are_named():
    z = np.zeros((1, 8, 8), bool)
    with pytest.raises(PseudoLabelError, match=r"redraw level=0: expected a number in \(0, 1\]"):
        redraw(z, np.zeros((1, 8, 8, 3), np.uint8), z, 0, 4)
    with pytest.raises(PseudoLabelError, match="redraw radius=0"):
        redraw(z, np.zeros((1, 8, 8, 3), np.uint8), z, 0.5, 0)
    with pytest.raises(PseudoLabelError, match="expected N x H x W, N x H x W and N x H x W x C"):
        redraw(z, np.zeros((1, 4, 4, 3), np.uint8), z, 0.5, 4)
    with pytest.raises(PseudoLabelError, match=r"redraw level=1\.5"):
        pseudo_study.PseudoGrid(redraw_levels=[1.5])
    with pytest.raises(PseudoLabelError, match="redraw_radii is empty"):
        pseudo_study.PseudoGrid(redraw_levels=[0.5], redraw_radii=[])
    with pytest.raises(PseudoLabelError, match=r"gate=-0\.1"):
        pseudo_study.PseudoGrid(gate=-0.1)


def test_bad_targets_and_bands_are_named():
    z = np.zeros((1, 2, 2), bool)
    with pytest.raises(PseudoLabelError, match="both tumour and ignored"):
        Targets(~z, ~z)
    with pytest.raises(PseudoLabelError, match="mask must be bool"):
        Targets(z.astype(np.uint8), z)
    with pytest.raises(PseudoLabelError, match=r"band=1\.0: expected a number in \[0, 1\)"):
        band_targets(np.zeros((1, 2, 2)), z, np.ones(1, bool), 1.0)
    with pytest.raises(PseudoLabelError, match="bands is empty"):
        pseudo_study.PseudoGrid(bands=[])
    with pytest.raises(PseudoLabelError, match="rounds=-1"):
        pseudo_study.PseudoGrid(rounds=-1)
    with pytest.raises(PseudoLabelError, match=r"empty_share=0: expected a share in \(0, 1\]"):
        pseudo_study.PseudoGrid(empty_share=0)


# ------------------------------------------------------------------ the loss


def test_loss_without_ignored_pixels_is_05s_loss():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(3, 8, 8, generator=g), (torch.rand(3, 8, 8, generator=g) > 0.7).float()
    assert segmentation_loss(logits, target, torch.zeros(3, 8, 8, dtype=torch.bool)).item() == pytest.approx(
        segmentation_loss(logits, target).item(), rel=1e-6)


def test_loss_by_hand_and_blind_to_ignored_pixels():
    logits = torch.zeros(1, 1, 2, requires_grad=True)
    target, ignore = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[False, True]]])
    loss = segmentation_loss(logits, target, ignore)
    # counted pixel: BCE log 2; soft Dice 1 - (2 * 0.5 + 1) / (0.5 + 1 + 1) = 0.2
    assert loss.item() == pytest.approx(np.log(2) + 0.2, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 0, 1] == 0 and logits.grad[0, 0, 0] != 0
    moved = torch.tensor([[[0.0, 7.0]]])  # whatever the network says at an ignored pixel
    assert segmentation_loss(moved, target, ignore).item() == pytest.approx(loss.item(), rel=1e-6)
    assert segmentation_loss(logits.detach(), target, torch.ones_like(ignore)).item() == 0.0  # nothing counted


def test_loss_matches_bce_over_the_counted_pixels():
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(2, 6, 6, generator=g), (torch.rand(2, 6, 6, generator=g) > 0.5).float()
    ignore = torch.rand(2, 6, 6, generator=g) > 0.6
    keep = ~ignore
    p, t = torch.sigmoid(logits) * keep, target * keep
    soft = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)
    want = F.binary_cross_entropy_with_logits(logits[keep], target[keep]) + soft.mean()
    assert segmentation_loss(logits, target, ignore).item() == pytest.approx(want.item(), rel=1e-6)


# ------------------------------------------------------------------ no drawn training mask is read


def _minimal_run(src, dst):
    """What 07 reads from a run folder finished through 05; the classifier's calls follow the slice labels,
    so that the smoke classifier (barely trained) leaves tumour slices to make pseudo-masks from."""
    for rel in ("data", "metrics/05_dice.json", "models/small_cnn/best.pt", "models/unet/best.pt"):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (src / rel).is_dir() else shutil.copy)(src / rel, dst / rel)
    pred = pd.read_csv(src / "models" / "small_cnn" / "predictions.csv")
    pred.assign(prob=np.where(pred.tumour, 0.9, 0.1)).to_csv(dst / "models" / "small_cnn" / "predictions.csv",
                                                             index=False)


def test_training_masks_are_never_read(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    clean, bad = tmp_path / "clean", tmp_path / "bad"
    _minimal_run(run_dir, clean)
    _minimal_run(run_dir, bad)
    ds = data.load_dataset(bad / "data")
    train = (ds.manifest.split == "train").to_numpy()
    masks = ds.masks.copy()
    masks[train] = ~masks[train]  # every drawn training mask inverted; labels, images and other splits kept
    data.save_dataset(data.Dataset(ds.images, masks, ds.manifest), bad / "data")
    grid = pseudo_study.PseudoGrid(bands=[0.3], rounds=1, epochs=1, empty_share=0.1,  # few empty slices: fast
                                   redraw_levels=[0.5], redraw_radii=[4])
    elsewhere = tmp_path / "networks"  # the bad run's networks outside its folder (benchmarks/bench_pseudo.py)
    runs = [pseudo_study.study_pseudo(r, grid, control=False, device="cpu", n_boot=20, resume=False, progress=False,
                                      models_dir=d) for r, d in ((clean, None), (bad, elsewhere))]
    a, b = (s.sources["cam"] for s in runs)
    assert all(Path(r["network"]).is_relative_to(elsewhere) for r in b.rows)
    assert (clean / "models" / "pseudo").is_dir() and not (bad / "models" / "pseudo").exists()
    assert len(a.rows) == len(b.rows) == 2 and a.rows[0]["slices_with_tumour"] > 0.1
    assert 0 < a.rows[0]["ignored_pixels"] and 0 < a.rows[0]["tumour_pixels"]
    for ra, rb in zip(a.rows, b.rows):
        _, _, ca = load_network(ra["network"])
        _, _, cb = load_network(rb["network"])
        assert ca["config"] == cb["config"]  # holds the digest of the targets: the same pseudo-masks
        assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])  # the same network
    assert a.unet.scores == b.unet.scores
    assert len(a.redraw_rows) == 2 and a.redraw_rows == b.redraw_rows  # chosen on validation alone


# ------------------------------------------------------------------ several networks as one


def test_the_mean_of_networks_is_one_more_candidate_and_the_control_follows_the_choice(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    _minimal_run(run_dir, tmp_path / "run")
    grid = pseudo_study.PseudoGrid(bands=[0.3], rounds=0, epochs=1, empty_share=0.1, ensemble=2,
                                   redraw_levels=[0.5], redraw_radii=[4], redraw_outputs=True)
    study = pseudo_study.study_pseudo(tmp_path / "run", grid, device="cpu", n_boot=20, resume=False, progress=False,
                                      seed=4)
    cam = study.sources["cam"]
    one, mean = cam.rows
    assert (one["networks"], mean["networks"]) == (1, 2) and mean["members"][0] == one["network"]
    first, second = (load_network(p)[2] for p in mean["members"])
    assert "seed5" in mean["members"][1] and (first["config"]["seed"], second["config"]["seed"]) == (4, 5)
    same = {k: v for k, v in first["config"].items() if k != "seed"}
    assert same == {k: v for k, v in second["config"].items() if k != "seed"}  # the same targets and recipe
    # the prediction is the mean of the two networks' probabilities
    images = study.test.images
    both, norm, _ = load_networks(mean["members"])
    want = np.mean([probability_maps(*load_network(p)[:2], images) for p in mean["members"]], 0)
    assert np.allclose(probability_maps(both, norm, images), want, atol=1e-5)
    assert cam.chosen is max(cam.rows, key=lambda r: r["val_mean_dice"])
    control = study.sources["random"]
    assert control.chosen["networks"] == cam.chosen["networks"] and len(control.rows) == cam.chosen["networks"]
    record = pseudo_study.pseudo_record(study, pseudo_study.results_table(study), 20, tmp_path / "run", 0.0)
    p = record["pseudo"]
    assert p["networks"] == len(p["members"]) == cam.chosen["networks"] and record["grid"]["ensemble"] == 2
    assert p["members"][0]["network"] == p["network"] and p["members"][0]["network_sha256"] == p["network_sha256"]
    # post-processing: every 3-D clean-up with and without the re-draw, the best on validation; the test masks
    # are what network_masks (and so evaluate) draws with the chosen values
    rows = cam.unet.val_rows
    assert len(rows) == 2 * len(study.grid.volume_cleanups)
    assert {(r["output_redraw_level"], r["output_redraw_radius"]) for r in rows} == {(0.0, 0), (0.5, 4)}
    assert cam.unet.chosen is max(rows, key=lambda r: r["mean_dice"])
    c = cam.unet.chosen
    again = network_masks(both, norm, study.test.part, c["volume_cleanup"], c["output_redraw_level"],
                          c["output_redraw_radius"])
    assert (again == cam.unet.masks).all()
    assert all(p[k] == c[k] for k in pseudo_study.POSTPROCESSING)


def test_networks_trained_on_other_images_are_not_averaged():
    a = (UNet(4), Normalise([0.1, 0.2, 0.3], [1.0, 1.0, 1.0]))
    b = (UNet(4), Normalise([0.1, 0.2, 0.4], [1.0, 1.0, 1.0]))
    assert as_ensemble([a], ["a.pt"]) == a
    with pytest.raises(PseudoLabelError, match="b.pt was trained on other images than a.pt"):
        as_ensemble([a, b], ["a.pt", "b.pt"])
    with pytest.raises(PseudoLabelError, match="no network path"):
        load_networks([])
    with pytest.raises(PseudoLabelError, match="ensemble=0"):
        pseudo_study.PseudoGrid(ensemble=0)
