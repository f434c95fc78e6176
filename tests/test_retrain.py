"""The re-training study's tables and verdict rules, on hand-made tables of runs."""

import math

import numpy as np
import pandas as pd
import pytest

from camseg_utils import retrain as rt


def _runs(readings: dict, original: dict | None = None, seeds=(0, 1, 2)) -> pd.DataFrame:
    """Runs whose per-seed AUCs are mean + (-sd, 0, +sd): their sample sd is exactly sd.

    ``readings``: (heatmap, input, filter, k, imputation) -> (mean, sd); ``original``: (heatmap, filter, k,
    imputation) -> AUC."""
    rows = []
    for (h, inp, f, k, imp), (m, sd) in readings.items():
        for s, d in zip(seeds, (-sd, 0.0, sd)):
            rows.append({"heatmap": h, "input": inp, "filter": f, "k": float(k), "imputation": imp, "seed": s,
                         "accuracy": 0.5, "auc": m + d})
    for (h, f, k, imp), a in (original or {}).items():
        rows.append({"heatmap": h, "input": "original", "filter": f, "k": float(k), "imputation": imp, "seed": None,
                     "accuracy": 0.5, "auc": a})
    return pd.DataFrame(rows)


def _study(hot=(0.95, 0.01), hot_nli=(0.95, 0.01), shape=(0.98, 0.01), dark_nli=(0.90, 0.01), rand=(0.60, 0.02),
           weight=(0.99, 0.005), orig_hot=0.90, orig_rand=0.55, orig_dark=0.80):
    h, k = "cam", 10
    readings = {
        (h, "image", "keep", k, "mean"): hot, (h, "image", "keep", k, "nli"): hot_nli,
        (h, "image", "remove", k, "mean"): (0.92, 0.01), (h, "image", "remove", k, "nli"): dark_nli,
        (h, "image", "keep_hot", 0, "-"): (0.99, 0.004), (h, "image", "keep_dark", 0, "-"): (0.94, 0.02),
        (h, "shape", rt.SHAPE_HARD, k, "-"): shape, (h, "shape", rt.SHAPE_SOFT, 0, "-"): weight,
        ("random", "image", "keep", k, "mean"): rand, ("random", "image", "keep", k, "nli"): rand,
        ("random", "image", "remove", k, "mean"): (0.95, 0.01), ("random", "image", "remove", k, "nli"): (0.95, 0.01),
        ("random", "image", "keep_hot", 0, "-"): (0.90, 0.02), ("random", "image", "keep_dark", 0, "-"): (0.9, 0.02),
    }
    original = {(h, "keep", k, "mean"): orig_hot, ("random", "keep", k, "mean"): orig_rand,
                (h, "remove", k, "mean"): orig_dark, ("random", "remove", k, "mean"): 0.9,
                (h, "keep_hot", 0, "-"): 0.9, (h, "keep_dark", 0, "-"): 0.7}
    return rt.summarise(_runs(readings, original))


def _overall(rows, claim):
    return next(r for r in rows if r["claim"] == rt.CLAIMS[claim] and r["test"] == "overall")["verdict"]


def test_summary_puts_the_shape_only_control_beside_each_filter():
    s = _study().set_index(["heatmap", "filter", "k", "imputation"])
    r = s.loc[("cam", "keep", 10.0, "nli")]
    assert r.auc == pytest.approx(0.95) and r.auc_sd == pytest.approx(0.01)
    assert r.shape_auc == pytest.approx(0.98) and r.image_minus_shape == pytest.approx(-0.03)
    assert r.image_minus_shape_sd == pytest.approx(math.hypot(0.01, 0.01))
    # keep and remove at the same k share one mask; keep-hot and keep-dark one weight map
    assert s.loc[("cam", "remove", 10.0, "mean")].shape_auc == pytest.approx(0.98)
    assert s.loc[("cam", "keep_dark", 0.0, "-")].shape_auc == pytest.approx(0.99)
    # the original classifier reads the mean fill only (imputing at full size is too slow)
    assert s.loc[("cam", "keep", 10.0, "mean")].original_auc == pytest.approx(0.90) and math.isnan(r.original_auc)
    assert math.isnan(s.loc[("random", "keep", 10.0, "nli")].shape_auc)  # no shape-only run for the random maps
    assert (s.seeds == 3).all()
    rows = rt.display_table(_study())
    assert any(d["re-trained on images"] == "0.950 ± 0.010" and d["shape only"] == "0.980 ± 0.010" for d in rows)


def test_compare_uses_twice_the_larger_spread():
    assert rt.compare((0.80, 0.01), (0.70, 0.02)) == 1  # 0.10 > 2 x 0.02
    assert rt.compare((0.70, 0.01), (0.80, 0.02)) == -1
    assert rt.compare((0.80, 0.06), (0.70, 0.01)) == 0  # 0.10 < 2 x 0.06
    assert rt.compare((0.53, math.nan), (0.50, 0.0)) == 1  # seedless: the floor 2 x 0.01
    assert rt.compare((0.515, math.nan), (0.50, 0.0)) == 0


def test_judge_walks_baseline_then_shape():
    assert rt.judge((0.95, 0.01), (0.6, 0.02), (0.80, 0.01))[0] == rt.SUPPORTED
    assert rt.judge((0.95, 0.01), (0.6, 0.02), (0.96, 0.01))[0] == rt.CONFOUNDED
    assert rt.judge((0.62, 0.01), (0.6, 0.02), (0.50, 0.01))[0] == rt.NOT_SUPPORTED
    assert rt.judge((0.95, 0.15), (0.6, 0.02), (0.50, 0.01))[0] == rt.INCONCLUSIVE
    assert rt.judge((0.95, 0.01), (math.nan, math.nan))[0] == rt.INCONCLUSIVE
    verdict, reason = rt.judge((0.95, 0.01), (0.6, 0.02), (0.96, 0.01))
    assert "0.960 ± 0.010" in reason


def test_the_shape_alone_explaining_the_reading_is_confounded():
    rows = rt.claim_verdicts(_study(), "cam", 10)
    assert _overall(rows, "hot") == rt.CONFOUNDED
    assert _overall(rows, "dark") == rt.CONFOUNDED
    orig = next(r for r in rows if r["claim"] == rt.CLAIMS["hot"] and r["test"].startswith("original"))
    assert orig["verdict"] == rt.SUPPORTED  # 0.90 against random 0.55, no shape control: an outline cannot fool it
    primary = [r for r in rows if r["test"].endswith("(primary)")]
    assert len(primary) == 2 and all("nli fill" in r["test"] for r in primary)


def test_image_content_beyond_the_shape_supports_the_claims():
    rows = rt.claim_verdicts(_study(hot_nli=(0.95, 0.01), shape=(0.80, 0.01), dark_nli=(0.90, 0.01)), "cam", 10)
    assert _overall(rows, "hot") == rt.SUPPORTED and _overall(rows, "dark") == rt.SUPPORTED
    # the mean fill's test is reported too, but the imputed fill decides
    rows = rt.claim_verdicts(_study(hot=(0.95, 0.01), hot_nli=(0.70, 0.01), shape=(0.80, 0.01)), "cam", 10)
    assert _overall(rows, "hot") == rt.CONFOUNDED  # beats random (0.60), not the shape (0.80)
    mean_row = next(r for r in rows if r["claim"] == rt.CLAIMS["hot"] and "mean fill" in r["test"]
                    and r["test"].startswith("re-trained"))
    assert mean_row["verdict"] == rt.SUPPORTED


def test_not_beating_random_is_not_supported_unless_the_original_classifier_disagrees():
    weak = dict(hot_nli=(0.61, 0.01), rand=(0.60, 0.02))
    assert _overall(rt.claim_verdicts(_study(**weak, orig_hot=0.56), "cam", 10), "hot") == rt.NOT_SUPPORTED
    assert _overall(rt.claim_verdicts(_study(**weak, orig_hot=0.90), "cam", 10), "hot") == rt.INCONCLUSIVE
    # the dark remainder at chance is not supported
    assert _overall(rt.claim_verdicts(_study(dark_nli=(0.51, 0.01), orig_dark=0.5), "cam", 10), "dark") == rt.NOT_SUPPORTED


def test_spread_seeds_are_inconclusive_and_missing_readings_too():
    assert _overall(rt.claim_verdicts(_study(hot_nli=(0.9, 0.2)), "cam", 10), "hot") == rt.INCONCLUSIVE
    assert _overall(rt.claim_verdicts(_study(), "cam", 50), "hot") == rt.INCONCLUSIVE  # k = 50 was not run


def test_overall_rule():
    assert rt.overall(rt.SUPPORTED, rt.NOT_SUPPORTED) == rt.SUPPORTED
    assert rt.overall(rt.NOT_SUPPORTED, rt.SUPPORTED) == rt.INCONCLUSIVE
    assert rt.overall(rt.CONFOUNDED, rt.SUPPORTED) == rt.CONFOUNDED
    with pytest.raises(ValueError, match="expected among"):
        rt.overall("maybe", rt.SUPPORTED)


def test_bad_tables_and_experiments_are_refused():
    with pytest.raises(ValueError, match="lack the columns"):
        rt.summarise(pd.DataFrame({"heatmap": ["x"]}))
    with pytest.raises(ValueError, match="no shape-only control"):
        rt.shape_of("blur", 0)
    img = {s: np.zeros((2, 8, 8, 3), np.uint8) for s in rt.SPLITS}
    man = {s: pd.DataFrame({"tumour": [0, 1]}) for s in rt.SPLITS}
    with pytest.raises(ValueError, match="random control"):
        rt.run_experiment(img, man, {"cam": {}}, (None, None), np.zeros(3), [10], "/nonexistent")
    with pytest.raises(ValueError, match="at least two"):
        rt.run_experiment(img, man, {"random": {}}, (None, None), np.zeros(3), [10], "/nonexistent", seeds=[0])


def test_resizing_keeps_types_and_ranges():
    x = np.random.default_rng(0).integers(0, 256, (3, 20, 20, 3)).astype(np.uint8)
    small = rt.resize_images(x, 10)
    assert small.shape == (3, 10, 10, 3) and small.dtype == np.uint8
    assert rt.resize_images(x, 20) is x or np.array_equal(rt.resize_images(x, 20), x)
    m = rt.resize_maps(np.random.default_rng(1).random((3, 20, 20)), 10)
    assert m.shape == (3, 10, 10) and m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1
