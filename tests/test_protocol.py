"""The protocol's reporting helpers and notebook 05's figures, on hand-made studies."""

import numpy as np
import pandas as pd
import pytest

from camseg_utils import dice_figures, metrics, protocol
from camseg_utils.dataset import Dataset


def _test_split(n_patients=3, per_patient=4, size=8):
    """Slices of ``n_patients`` patients; the first two slices of each hold a tumour growing with the slice."""
    gt = np.zeros((n_patients * per_patient, size, size), bool)
    for p in range(n_patients):
        for s in range(2):
            gt[p * per_patient + s, 2:3 + s + p, 2:5] = True
    manifest = pd.DataFrame({"patient": np.repeat([f"P{p}" for p in range(n_patients)], per_patient),
                             "tumour": gt.reshape(len(gt), -1).any(1), "tumour_pixels": gt.reshape(len(gt), -1).sum(1)})
    part = Dataset(np.zeros((len(gt), size, size, 3), np.uint8), gt, manifest)
    return protocol.Split(part, gt, np.ones_like(gt), manifest.patient.to_numpy())


def _unet(test, masks):
    return protocol.UnetStudy({"mean_dice": 0.8, "patient_dice": 0.7, "volume_cleanup": 0.0}, [], masks,
                              metrics.score_masks(masks, test.gt, test.patients, n_boot=20))


def test_best_cam_lines_put_each_refinement_beside_the_unet():
    test = _test_split()
    unet = _unet(test, test.gt)  # a perfect U-Net: mean-Dice 1
    rows = pd.DataFrame([
        {"arch": "small_cnn", "method": "gradcam", "layer": "last", "refinement": "none", "mean_dice": 0.25,
         "mean_dice_ci": [0.2, 0.3], "patient_dice": 0.4, "val_mean_dice": 0.3},
        {"arch": "small_cnn", "method": "layercam", "layer": "middle", "refinement": "guided", "mean_dice": 0.5,
         "mean_dice_ci": [0.45, 0.55], "patient_dice": 0.6, "val_mean_dice": 0.5}])
    _, by_refinement = protocol.best_cams(rows)
    lines = protocol.best_cam_lines(by_refinement, unet, "mean_dice").splitlines()
    assert lines == [
        "best CAM, refinement=guided (chosen on validation by mean_dice): small_cnn layercam @ middle: test mean-Dice "
        "0.500 [0.450, 0.550], patient Dice 0.600; U-Net 1.000; ratio 0.50",
        "best CAM, refinement=none (chosen on validation by mean_dice): small_cnn gradcam @ last: test mean-Dice "
        "0.250 [0.200, 0.300], patient Dice 0.400; U-Net 1.000; ratio 0.25"]


def test_patient_frames_and_their_figure_hold_every_setting_and_the_unet(tmp_path):
    test = _test_split()
    half = test.gt.copy()
    half[:, :, 3:] = False  # a CAM that finds part of each tumour
    cam = protocol.patient_frame(half, test, "small_cnn gradcam @ last", "CAM")
    study = protocol.CamStudy(pd.DataFrame(), pd.DataFrame(), [cam])
    pp = protocol.patient_frames(study, _unet(test, test.gt), test)
    assert list(pp.model.unique()) == ["small_cnn gradcam @ last", "U-Net"] and len(pp) == 2 * 3
    assert (pp[pp.model == "U-Net"].patient_dice == 1).all() and (pp[pp.kind == "CAM"].patient_dice < 1).all()
    fig = dice_figures.patient_dice(pp, tmp_path / "pp.png")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["U-Net", "small_cnn gradcam @ last"]  # best mean first
    assert (tmp_path / "pp.png").stat().st_size > 0


def test_by_tumour_size_spreads_from_the_smallest_tumour_to_the_largest():
    manifest = pd.DataFrame({"tumour": [False, True, True, False, True, True, True],
                             "tumour_pixels": [0, 50, 10, 0, 30, 20, 40]})
    assert dice_figures.by_tumour_size(manifest, 4).tolist() == [2, 5, 4, 1]  # 10, 20, 30, 50 pixels (ranks 0, 1.3, 2.7, 4)
    assert dice_figures.by_tumour_size(manifest, 5).tolist() == [2, 5, 4, 6, 1]
    with pytest.raises(ValueError, match="no slice with tumour"):
        dice_figures.by_tumour_size(manifest[~manifest.tumour])


def test_patient_dice_figure_takes_a_patient_without_any_dice(tmp_path):
    """A tumour-free test patient with no prediction has no 3-D Dice (NaN) under every model."""
    idx = pd.Index(["a", "b", "c"], name="patient")
    frames = pd.concat([pd.DataFrame({"patient_dice": [0.1, np.nan, 0.3]}, index=idx).assign(model=m, kind=k)
                        for m, k in (("cam", "CAM"), ("random", "baseline"), ("U-Net", "U-Net"))])
    dice_figures.patient_dice(frames, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_paired_figure_takes_an_interval_that_misses_its_point(tmp_path):
    """Percentile intervals of few patients can lie beside the mean difference; the figure still draws."""
    rows = pd.DataFrame({"comparison": ["a vs b", "a vs b", "c vs d", "c vs d"],
                         "metric": ["mean_dice", "patient_dice"] * 2, "difference": [0.1, -0.2, 0.0, np.nan],
                         "ci": [[0.12, 0.3], [-0.5, -0.25], [0.0, 0.0], [np.nan, np.nan]]})
    dice_figures.paired_differences(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
