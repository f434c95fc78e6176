"""The re-training study's tables, verdict rules, record and figures, on hand-made tables of runs."""

import math

import numpy as np
import pandas as pd
import pytest

from camseg_utils import claims, data, retrain_figures, train
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
    return next(r for r in rows if r["claim"] == claims.CLAIMS[claim] and r["test"] == "overall")["verdict"]


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
    assert claims.compare((0.80, 0.01), (0.70, 0.02)) == 1  # 0.10 > 2 x 0.02
    assert claims.compare((0.70, 0.01), (0.80, 0.02)) == -1
    assert claims.compare((0.80, 0.06), (0.70, 0.01)) == 0  # 0.10 < 2 x 0.06
    assert claims.compare((0.53, math.nan), (0.50, 0.0)) == 1  # seedless: the floor 2 x 0.01
    assert claims.compare((0.515, math.nan), (0.50, 0.0)) == 0


def test_judge_walks_baseline_then_shape():
    assert claims.judge((0.95, 0.01), (0.6, 0.02), (0.80, 0.01))[0] == claims.SUPPORTED
    assert claims.judge((0.95, 0.01), (0.6, 0.02), (0.96, 0.01))[0] == claims.CONFOUNDED
    assert claims.judge((0.62, 0.01), (0.6, 0.02), (0.50, 0.01))[0] == claims.NOT_SUPPORTED
    assert claims.judge((0.95, 0.15), (0.6, 0.02), (0.50, 0.01))[0] == claims.INCONCLUSIVE
    assert claims.judge((0.95, 0.01), (math.nan, math.nan))[0] == claims.INCONCLUSIVE
    verdict, reason = claims.judge((0.95, 0.01), (0.6, 0.02), (0.96, 0.01))
    assert "0.960 ± 0.010" in reason


def test_the_shape_alone_explaining_the_reading_is_confounded():
    rows = claims.claim_verdicts(_study(), "cam", 10)
    assert _overall(rows, "hot") == claims.CONFOUNDED
    assert _overall(rows, "dark") == claims.CONFOUNDED
    orig = next(r for r in rows if r["claim"] == claims.CLAIMS["hot"] and r["test"].startswith("original"))
    assert orig["verdict"] == claims.SUPPORTED  # 0.90 against random 0.55, no shape control: an outline cannot fool it
    primary = [r for r in rows if r["test"].endswith("(primary)")]
    assert len(primary) == 2 and all("nli fill" in r["test"] for r in primary)


def test_image_content_beyond_the_shape_supports_the_claims():
    rows = claims.claim_verdicts(_study(hot_nli=(0.95, 0.01), shape=(0.80, 0.01), dark_nli=(0.90, 0.01)), "cam", 10)
    assert _overall(rows, "hot") == claims.SUPPORTED and _overall(rows, "dark") == claims.SUPPORTED
    # the mean fill's test is reported too, but the imputed fill decides
    rows = claims.claim_verdicts(_study(hot=(0.95, 0.01), hot_nli=(0.70, 0.01), shape=(0.80, 0.01)), "cam", 10)
    assert _overall(rows, "hot") == claims.CONFOUNDED  # beats random (0.60), not the shape (0.80)
    mean_row = next(r for r in rows if r["claim"] == claims.CLAIMS["hot"] and "mean fill" in r["test"]
                    and r["test"].startswith("re-trained"))
    assert mean_row["verdict"] == claims.SUPPORTED


def test_not_beating_random_is_not_supported_unless_the_original_classifier_disagrees():
    weak = dict(hot_nli=(0.61, 0.01), rand=(0.60, 0.02))
    assert _overall(claims.claim_verdicts(_study(**weak, orig_hot=0.56), "cam", 10), "hot") == claims.NOT_SUPPORTED
    assert _overall(claims.claim_verdicts(_study(**weak, orig_hot=0.90), "cam", 10), "hot") == claims.INCONCLUSIVE
    # the dark remainder at chance is not supported
    assert _overall(claims.claim_verdicts(_study(dark_nli=(0.51, 0.01), orig_dark=0.5), "cam", 10), "dark") == claims.NOT_SUPPORTED


def test_spread_seeds_are_inconclusive_and_missing_readings_too():
    assert _overall(claims.claim_verdicts(_study(hot_nli=(0.9, 0.2)), "cam", 10), "hot") == claims.INCONCLUSIVE
    assert _overall(claims.claim_verdicts(_study(), "cam", 50), "hot") == claims.INCONCLUSIVE  # k = 50 was not run


def test_overall_rule():
    assert claims.overall(claims.SUPPORTED, claims.NOT_SUPPORTED) == claims.SUPPORTED
    assert claims.overall(claims.NOT_SUPPORTED, claims.SUPPORTED) == claims.INCONCLUSIVE
    assert claims.overall(claims.CONFOUNDED, claims.SUPPORTED) == claims.CONFOUNDED
    with pytest.raises(ValueError, match="expected among"):
        claims.overall("maybe", claims.SUPPORTED)


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


def test_study_verdicts_judge_every_heatmap_but_the_random_control_and_the_record_holds_them():
    summary = _study()
    found = claims.study_verdicts(summary, ["cam", "random"], 10, ("mean", "nli"))
    assert found == claims.claim_verdicts(summary, "cam", 10, ("mean", "nli"))  # random is the baseline, not judged
    overall = [v for v in found if v["test"] == "overall"]
    assert len(overall) == 2 and claims.reading(found).count("\n- **cam**, claim") == 1  # two bullets, one per claim
    assert claims.reading(found).startswith(f"- **cam**, claim *{claims.CLAIMS['hot']}*: **{overall[0]['verdict']}** (")
    runs = _runs({("none", "image", "none", 0, "-"): (0.97, 0.01), ("cam", "image", "keep", 10, "mean"): (0.9, 0.02)},
                 {("none", "none", 0, "-"): 0.985})
    s = rt.summarise(runs)
    ref = rt.unfiltered(s)
    assert ref.heatmap == rt.NO_HEATMAP and ref.auc == pytest.approx(0.97) and ref.original_auc == pytest.approx(0.985)
    rec = claims.record(runs, s, found, [0, 1, 2], 32, 3, 12.4)
    assert rec["verdicts"] == overall and rec["tables"]["Verdicts per claim and test"] == found
    assert rec["trainings"] == 6 and rec["seconds"] == 12.4  # two conditions x three seeds; the original's row is no training
    pd.testing.assert_frame_equal(pd.DataFrame(rec["results"]), s)  # the summary table, row by row
    assert "over seeds [0, 1, 2]; re-trained at 32 px for 3 epochs; unfiltered: re-trained 0.970 ± 0.010, original " \
           "classifier 0.985; 12 s." in rec["summary"]


def test_blur_check_ks_apply_to_the_refined_heatmaps_only():
    names = ["layercam", "layercam + guided r=4", "random"]
    assert rt.blur_check_ks(names, [10]) == {"layercam + guided r=4": [10]}
    assert rt.blur_check_ks(["gradcam", "random"], [10]) == {}


def test_figures_draw_every_filter_beside_its_shape_control(tmp_path):
    runs = _runs({("cam", inp, f, k, imp): (0.8, 0.01) for inp, f, k, imp in
                  [("image", "keep", 10, "mean"), ("image", "keep", 10, "nli"), ("image", "remove", 10, "mean"),
                   ("image", "remove", 10, "nli"), ("image", "keep_hot", 0, "-"), ("image", "keep_dark", 0, "-"),
                   ("shape", rt.SHAPE_HARD, 10, "-"), ("shape", rt.SHAPE_SOFT, 0, "-")]},
                 {("cam", "keep", 10, "mean"): 0.7})
    hard = retrain_figures._beside_shape(runs, ("keep", "remove"), rt.SHAPE_HARD, [{"imputation": i} for i in ("mean", "nli")])
    # the one shape-only run appears under each hard filter and fill: 2 x 2 x 3 seeds
    assert len(hard[hard.input == "shape"]) == 12 and set(hard[hard.input == "shape"].imputation) == {"mean", "nli"}
    assert len(hard[hard.input == "original"]) == 1 and not hard["filter"].isin(("keep_hot", rt.SHAPE_HARD)).any()
    g = retrain_figures.accuracy_vs_k(runs, ("mean", "nli"), tmp_path / "k.png")
    assert len(g.axes) == 4 and (tmp_path / "k.png").stat().st_size > 0  # a facet per hard filter and fill
    retrain_figures.keep_hot_vs_dark(runs, tmp_path / "soft.png")
    ds = data.build_dataset("synthetic", image_size=32, n_patients=6, progress=False).split("test")
    heat = np.random.default_rng(0).random(ds.images.shape[:3]).astype(np.float32)
    fig = retrain_figures.filtered_examples(ds, heat, 10, np.full(3, 100.0), ("mean", "nli"), 0.01, 16, tmp_path / "ex.png")
    first = int(np.argmax(ds.manifest.tumour.to_numpy()))
    assert ds.manifest.tumour.iloc[first] and ds.manifest.tumour.iloc[:first].sum() == 0
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["image", "keep_hot", "keep_dark", "keep 10 mean", "keep 10 nli", "remove 10 mean", "remove 10 nli",
                      "shape only 10"]
    assert fig.axes[0].get_images()[0].get_array().shape[:2] == (16, 16)  # drawn at the re-training size


def test_re_trainings_side_by_side_give_the_rows_of_one_by_one(tmp_path):
    import torch

    from camseg_utils.workers import cores, pinned_threads

    ds = data.build_dataset("synthetic", image_size=32, n_patients=12, seed=0, progress=False)
    parts = {s: ds.split(s) for s in data.SPLITS}
    images = {s: p.images for s, p in parts.items()}
    manifests = {s: p.manifest for s, p in parts.items()}
    rng = np.random.default_rng(0)
    heat = {name: {s: rng.random(images[s].shape[:3], dtype=np.float32) for s in data.SPLITS} for name in ("random",)}
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2))
    norm = train.Normalise([0.3] * 3, [0.2] * 3)
    model(torch.zeros(1, 3, 32, 32))
    args = (images, manifests, heat, (model.eval(), norm), np.full(3, 60.0), [50])
    kw = dict(imputations=["mean"], seeds=[0, 1], size=16, epochs=1, batch_size=16)
    logs = {"one": [], "two": []}
    with pinned_threads(1):
        one = rt.run_experiment(*args, tmp_path / "one", jobs=1, log=logs["one"].append, **kw)
    two = rt.run_experiment(*args, tmp_path / "two", jobs=2, threads=1, log=logs["two"].append, **kw)
    # 1 unfiltered + 4 filters of the random heatmap, 2 seeds each, each condition's original reading after its seeds
    assert list(zip(one.heatmap, one["filter"], one.input))[:6] == [
        ("none", "none", "image"), ("none", "none", "image"), ("none", "none", "original"),
        ("random", "keep_hot", "image"), ("random", "keep_hot", "image"), ("random", "keep_hot", "original")]
    assert len(one) == 2 * 5 + 5 and (one.input == "original").sum() == 5 and one.auc.nunique() > 5
    assert len(list((tmp_path / "two").iterdir())) == 10  # trained there, not reused from "one"
    pd.testing.assert_frame_equal(one, two)
    # one log line per condition, its mean and sd over that condition's seeds
    first = one[(one.heatmap == "none") & (one.input == "image")].auc
    assert len(logs["one"]) == 5 and logs["one"] == logs["two"]
    assert f"{first.mean():.3f} ± {first.std(ddof=1):.3f}" in logs["one"][0]
    with pytest.raises(ValueError, match="jobs=-1"):
        rt.parallel_jobs(-1, "cpu")
    assert rt.parallel_jobs(3, "cpu")[0] == 3
    n = min(torch.get_num_threads(), cores())  # automatic: one worker per thread, no more than the cores
    assert rt.parallel_jobs(0, "cpu") == (n, max(1, torch.get_num_threads() // n))
