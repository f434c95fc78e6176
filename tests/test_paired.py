"""Paired comparisons from per-slice counts: the same numbers as the mask metrics, differences per patient."""

import numpy as np
import pandas as pd
import pytest

from camseg_utils import metrics, paired


def _masks(rng, n=24, size=12, p=0.3):
    return rng.random((n, size, size)) < p


@pytest.fixture
def case():
    rng = np.random.default_rng(3)
    gt = _masks(rng, p=0.2)
    gt[::5] = False  # some slices without tumour
    patients = np.repeat([f"P{i}" for i in range(6)], 4)
    slices = np.tile(np.arange(4), 6)
    a, b = gt ^ _masks(rng, p=0.05), _masks(rng, p=0.2)
    counts = pd.concat([paired.slice_counts(a, gt, patients, slices, "A"),
                        paired.slice_counts(b, gt, patients, slices, "B")], ignore_index=True)
    return gt, patients, a, b, counts


def test_scores_from_counts_equal_the_mask_metrics(case):
    gt, patients, a, _, counts = case
    want = metrics.score_masks(a, gt, patients, n_boot=200, seed=1)
    got = paired.scores(counts, "A", n_boot=200, seed=1)
    for key in ("mean_dice", "patient_dice"):
        assert got[key] == pytest.approx(want[key])
        assert got[f"{key}_ci"] == pytest.approx(want[f"{key}_ci"])


def test_mean_dice_difference_is_the_difference_of_means(case):
    gt, patients, a, b, counts = case
    row = paired.paired(counts, "A", "B", "mean_dice", n_boot=200)
    assert row["difference"] == pytest.approx(metrics.mean_dice(a, gt) - metrics.mean_dice(b, gt))
    assert row["a_value"] == pytest.approx(metrics.mean_dice(a, gt))
    lo, hi = row["ci"]
    assert lo <= row["difference"] <= hi
    assert row["patients"] == 6 and row["a_better"] + row["b_better"] <= 6


def test_patient_dice_difference_by_hand():
    # two patients of two slices; counts chosen so every Dice is easy to write down
    counts = pd.DataFrame({
        "setting": ["A"] * 4 + ["B"] * 4,
        "patient": ["p", "p", "q", "q"] * 2,
        "slice": [0, 1, 0, 1] * 2,
        "inter": [4, 0, 2, 0, 2, 0, 2, 0],
        "pred": [4, 0, 2, 0, 6, 2, 2, 2],
        "gt": [4, 0, 4, 0, 4, 0, 4, 0],
    })
    row = paired.paired(counts, "A", "B", "patient_dice", n_boot=100)
    # p: A 8/8 = 1, B 4/12 = 1/3; q: A 4/6 = 2/3, B 4/8 = 1/2
    assert row["difference"] == pytest.approx(((1 - 1 / 3) + (2 / 3 - 1 / 2)) / 2)
    assert row["a_better"] == 2 and row["b_better"] == 0
    md = paired.paired(counts, "A", "B", "mean_dice", n_boot=100)
    # tumour slices only: p0 A 8/8 = 1, B 4/10; q0 A 4/6, B 4/6
    assert md["difference"] == pytest.approx((1 - 0.4 + 0) / 2)
    assert md["a_better"] == 1 and md["b_better"] == 0


def test_a_consistently_better_is_supported_and_equal_settings_are_not():
    rng = np.random.default_rng(0)
    gt = _masks(rng, n=40, p=0.4)
    patients = np.repeat([f"P{i}" for i in range(20)], 2)
    slices = np.tile([0, 1], 20)
    good, bad = gt ^ _masks(rng, n=40, p=0.05), gt & _masks(rng, n=40, p=0.5)
    counts = pd.concat([paired.slice_counts(m, gt, patients, slices, s) for m, s in
                        ((good, "good"), (bad, "bad"), (good, "copy"))], ignore_index=True)
    row = paired.paired(counts, "good", "bad", n_boot=300)
    assert row["ci"][0] > 0 and row["p"] < 0.01 and row["a_better"] == 20
    same = paired.paired(counts, "good", "copy", n_boot=300)
    assert same["difference"] == 0 and same["p"] == 1.0 and same["ci"] == [0.0, 0.0]


def test_bad_input_is_refused_with_names(case):
    gt, patients, a, _, counts = case
    with pytest.raises(paired.PairedError, match="'C'.*A, B"):
        paired.paired(counts, "A", "C")
    other = paired.slice_counts(a[:-1], gt[:-1], patients[:-1], np.tile(np.arange(4), 6)[:-1], "short")
    with pytest.raises(paired.PairedError, match="not scored on the same slices"):
        paired.paired(pd.concat([counts, other]), "A", "short")
    with pytest.raises(paired.PairedError, match="metric='auc'"):
        paired.paired(counts, "A", "B", "auc")
    with pytest.raises(paired.PairedError, match="shape"):
        paired.slice_counts(a[:, :5], gt, patients, patients, "X")


def test_compare_gives_both_metrics_per_pair(case):
    *_, counts = case
    table = paired.compare(counts, [("A vs B", "A", "B")], n_boot=50)
    assert list(table.metric) == ["mean_dice", "patient_dice"] and set(table.comparison) == {"A vs B"}


def test_study_pairs_follow_the_chosen_setting():
    rows = [("cnn", m, layer, r) for m in ("gradcam", "layercam") for layer in ("early", "middle")
            for r in ("none", "guided")] + [("cnn", "random", "-", r) for r in ("none", "guided")]
    results = pd.DataFrame(rows, columns=["arch", "method", "layer", "refinement"])
    best = results.iloc[3]  # gradcam @ middle + guided
    pairs = paired.study_pairs(best, results, {"random", "sobel"})
    assert pairs == [
        ("CAM vs random heatmap", "cnn gradcam @ middle + guided", "cnn random + guided"),
        ("U-Net vs CAM", "U-Net", "cnn gradcam @ middle + guided"),
        ("guided vs none", "cnn gradcam @ middle + guided", "cnn gradcam @ middle"),
        ("early vs middle layer", "cnn gradcam @ early + guided", "cnn gradcam @ middle + guided"),
    ]
    plain = paired.study_pairs(results.iloc[4], results, {"random"})  # layercam @ early, none
    assert ("guided vs none", "cnn layercam @ early + guided", "cnn layercam @ early") in plain
