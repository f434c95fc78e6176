import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from camseg_utils import data, metrics, unet, widgets  # noqa: E402
from camseg_utils.morphology import keep_volume_components  # noqa: E402


def test_render_threshold_shows_the_live_dice():
    img = np.zeros((16, 16, 3), np.uint8)
    gt = np.zeros((16, 16), bool)
    gt[4:8, 4:8] = True
    hm = gt.astype(np.float32)
    fig = widgets.render_threshold(img, hm, gt, hm >= 0.5, 0.5)
    assert "Dice 1.000" in [ax.get_title() for ax in fig.axes]
    fig = widgets.render_threshold(img, hm, np.zeros_like(gt), np.zeros_like(gt), 0.5)
    assert "Dice n/a (no tumour)" in [ax.get_title() for ax in fig.axes]


def test_render_methods_one_panel_per_method():
    img = np.zeros((16, 16, 3), np.uint8)
    fig = widgets.render_methods(img, np.zeros((16, 16), bool), {"a": np.zeros((16, 16)), "b": np.ones((16, 16))})
    assert [ax.get_title() for ax in fig.axes][1:] == ["a", "b"]


def test_unet_learns_and_reloads(tmp_path):
    ds = data.build_dataset("synthetic", image_size=32, n_patients=6, progress=False)
    tr, va = ds.split("train"), ds.split("val")
    m, n, ck = unet.train_unet(tr, va, tmp_path, epochs=2, width=4, device="cpu", progress=False)
    assert ck["history"][-1]["train_loss"] < ck["history"][0]["train_loss"]
    masks = unet.predict_masks(m, n, va.images)
    assert masks.shape == va.masks.shape and masks.dtype == bool
    m2, n2, ck2 = unet.train_unet(tr, va, tmp_path, epochs=2, width=4, device="cpu", progress=False)
    assert ck2["history"] == ck["history"]  # reloaded, not retrained
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    # 3-D clean-up chosen on validation: one score row per fraction, the chosen one the best
    chosen, rows = unet.choose_volume_cleanup(m, n, va, (0.0, 0.5, 1.0), "patient_dice")
    assert [r["volume_cleanup"] for r in rows] == [0.0, 0.5, 1.0]
    # by hand: each fraction's masks, their patient Dice, the first best fraction
    gt, patients = np.asarray(va.masks), va.manifest.patient.to_numpy()
    hand = [float(metrics.patient_dice(keep_volume_components(masks, va.manifest.case, va.manifest.slice, f), gt,
                                       patients).mean()) for f in (0.0, 0.5, 1.0)]
    assert [r["patient_dice"] for r in rows] == pytest.approx(hand)
    assert chosen["volume_cleanup"] == (0.0, 0.5, 1.0)[int(np.argmax(hand))]  # argmax: the first of equals
    assert chosen["patient_dice"] == max(r["patient_dice"] for r in rows)
    assert rows.index(chosen) == [r["patient_dice"] for r in rows].index(chosen["patient_dice"])  # ties: the first
    assert rows[0]["mean_dice"] == pytest.approx(metrics.mean_dice(masks, np.asarray(va.masks)))
    kept = unet.predict_volumes(m, n, va, 1.0)
    assert np.array_equal(kept, keep_volume_components(masks, va.manifest.case, va.manifest.slice, 1.0))
    with pytest.raises(ValueError, match="select_by='dice'"):
        unet.choose_volume_cleanup(m, n, va, (0.0,), "dice")
