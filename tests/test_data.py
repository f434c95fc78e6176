import os

import numpy as np
import pytest
from PIL import Image

from camseg_utils import data
from camseg_utils.data import DataError

from .conftest import LGG_ROOT


def snapshot(root):
    return sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*"))


def test_loader_reads_tif_and_png_in_numeric_order(lgg_tree):
    before = snapshot(lgg_tree)
    ds = data.load_lgg(lgg_tree, size=None, progress=False)
    assert ds.images.shape == (72, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.masks.shape == (72, 32, 32) and ds.masks.dtype == bool
    m = ds.manifest
    assert m["patient"].nunique() == 6
    assert set(m["institution"]) == {"CS", "DU", "HT"}
    one = m[m.patient == "TCGA_CS_0001"]
    assert one["slice"].tolist() == list(range(1, 13))  # 1, 2, ..., 10, 11, 12, not 1, 10, 11, 12, 2
    assert one["image_path"].str.endswith(".tif").all()
    assert m[m.patient == "TCGA_HT_0006"]["image_path"].str.endswith(".png").all()
    # tumour flag and pixel counts come from the masks
    assert m["tumour"].tolist() == [s in (2, 3) for s in m["slice"]]
    assert (m.loc[m.tumour, "tumour_pixels"] == 48).all()
    # the pixels are the ones on disk
    row = m.iloc[13]
    assert np.array_equal(ds.images[13], np.asarray(Image.open(row.image_path)))
    assert snapshot(lgg_tree) == before  # nothing written into the data root


def test_loader_resizes_masks_by_nearest_neighbour(lgg_tree):
    ds = data.load_lgg(lgg_tree, size=16, progress=False)
    assert ds.images.shape[1:] == (16, 16, 3)
    assert ds.masks.dtype == bool and ds.masks.shape[1:] == (16, 16)
    assert ds.masks[ds.manifest.tumour.to_numpy()].sum(axis=(1, 2)).min() == 12  # 6 x 8 box halved


def test_loader_patient_subset(lgg_tree):
    ds = data.load_lgg(lgg_tree, size=None, patients=2, progress=False)
    assert sorted(ds.manifest.patient.unique()) == ["TCGA_CS_0001", "TCGA_CS_0002"]
    with pytest.raises(DataError, match="TCGA_XX_9999"):
        data.load_lgg(lgg_tree, patients=["TCGA_XX_9999"], progress=False)


def test_missing_folder_names_layout_and_kaggle(tmp_path):
    with pytest.raises(DataError, match="kaggle_3m.*kaggle"):
        data.load_lgg(tmp_path / "nowhere", progress=False)


def test_empty_folder_says_no_cases(tmp_path):
    (tmp_path / "not_a_case").mkdir()
    with pytest.raises(DataError, match="no LGG cases found.*kaggle_3m"):
        data.scan_lgg(tmp_path)


def test_truncated_image_names_the_file(lgg_tree):
    bad = lgg_tree / "TCGA_DU_0003_20000101" / "TCGA_DU_0003_20000101_5.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DataError, match="TCGA_DU_0003_20000101_5.png"):
        data.load_lgg(lgg_tree, progress=False)


def test_image_without_mask_names_both(lgg_tree):
    case = lgg_tree / "TCGA_HT_0005_20010101"
    (case / "TCGA_HT_0005_20010101_7_mask.png").unlink()
    with pytest.raises(DataError, match=r"TCGA_HT_0005_20010101_7\.png has no mask.*_7_mask"):
        data.scan_lgg(lgg_tree)


def test_mask_without_image_names_both(lgg_tree):
    case = lgg_tree / "TCGA_HT_0005_20010101"
    (case / "TCGA_HT_0005_20010101_7.png").unlink()
    with pytest.raises(DataError, match=r"_7_mask\.png has no image"):
        data.scan_lgg(lgg_tree)


def test_size_mismatch_names_both_files(lgg_tree):
    case = lgg_tree / "TCGA_HT_0005_20010101"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(case / "TCGA_HT_0005_20010101_4_mask.png")
    with pytest.raises(DataError, match=r"_4\.png is 32x32 but its mask .*_4_mask\.png is 20x20"):
        data.load_lgg(lgg_tree, progress=False)


def test_build_dataset_errors():
    with pytest.raises(DataError, match="needs data_root"):
        data.build_dataset("lgg", None)
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        data.build_dataset("mnist")


def test_synthetic_shapes_masks_and_determinism():
    a = data.generate_synthetic(n_patients=8, size=64, seed=3)
    b = data.generate_synthetic(n_patients=8, size=64, seed=3)
    c = data.generate_synthetic(n_patients=8, size=64, seed=4)
    assert a.images.shape[1:] == (64, 64, 3) and a.images.dtype == np.uint8 and a.masks.dtype == bool
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert a.manifest.equals(b.manifest)
    assert not np.array_equal(a.images[: len(c)], c.images[: len(a)])
    m = a.manifest
    # masks are non-empty exactly on tumour slices, and there are both kinds
    assert np.array_equal(a.masks.any(axis=(1, 2)), m.tumour.to_numpy())
    assert 0 < m.tumour.sum() < len(m)
    # patients are stacks of consecutive slices, grouped in the manifest
    for _, g in m.groupby("patient"):
        assert g["slice"].tolist() == list(range(1, len(g) + 1))
    # tumours sit inside the head (non-black pixels)
    head = a.images.max(-1) > 0
    assert not (a.masks & ~head).any()
    # tumour slices of a patient are consecutive (one 3-D blob)
    for _, g in m[m.tumour].groupby("patient"):
        assert g["slice"].diff().dropna().eq(1).all()


def test_synthetic_makes_about_1000_slices_with_tiny_and_large_tumours():
    ds = data.generate_synthetic(n_patients=42, size=128, seed=0)
    assert len(ds) >= 900
    sizes = 100 * ds.manifest.loc[ds.manifest.tumour, "tumour_pixels"] / 128**2
    assert sizes.min() < 0.2 and sizes.max() > 5  # tiny and large tumours both occur


def test_synthetic_bad_parameters():
    with pytest.raises(DataError, match="n_patients"):
        data.generate_synthetic(n_patients=2)
    with pytest.raises(DataError, match="slices"):
        data.generate_synthetic(slices=(5, 2))


def test_split_is_patientwise_stratified_and_deterministic():
    ds = data.generate_synthetic(n_patients=40, size=48, seed=1)
    a = data.split_patients(ds.manifest, seed=7)
    b = data.split_patients(ds.manifest, seed=7)
    c = data.split_patients(ds.manifest, seed=8)
    assert a["split"].equals(b["split"])
    assert not a["split"].equals(c["split"])
    assert a.groupby("patient")["split"].nunique().max() == 1
    per_split = a.groupby("split")["patient"].nunique()
    assert per_split.to_dict() == {"train": 28, "val": 6, "test": 6}
    for _, part in a.groupby("split"):
        assert part.tumour.any() and (~part.tumour).any()
    # every site contributes to training
    assert a[a.split == "train"]["institution"].nunique() == 4


def test_split_errors():
    ds = data.generate_synthetic(n_patients=4, size=32, seed=0, tumour_free_patients=0)
    with pytest.raises(DataError, match="fractions"):
        data.split_patients(ds.manifest, (0.5, 0.5, 0.5))
    m = ds.manifest.copy()
    m["tumour"] = False
    with pytest.raises(DataError, match="lacks tumour or tumour-free"):
        data.split_patients(m)


def test_save_and_load_roundtrip(tmp_path):
    ds = data.build_dataset("synthetic", image_size=32, n_patients=6, progress=False)
    data.save_dataset(ds, tmp_path / "d")
    back = data.load_dataset(tmp_path / "d")
    assert np.array_equal(back.images, ds.images) and np.array_equal(back.masks, ds.masks)
    assert back.manifest["split"].tolist() == ds.manifest["split"].tolist()
    assert back.manifest["tumour"].dtype == bool
    assert not list((tmp_path / "d").glob(".*"))  # no temporary files left behind
    with pytest.raises(DataError, match="run notebook 01"):
        data.load_dataset(tmp_path / "missing")


def test_synthetic_written_in_kaggle_layout_loads_back(tmp_path):
    ds = data.generate_synthetic(n_patients=3, size=32, seed=0)
    data.write_kaggle_layout(ds, tmp_path / "ext")
    back = data.load_lgg(tmp_path / "ext", size=None, progress=False)
    assert np.array_equal(back.images, ds.images) and np.array_equal(back.masks, ds.masks)
    with pytest.raises(DataError, match="not empty"):
        data.write_kaggle_layout(ds, tmp_path / "ext")


@pytest.mark.skipif(not LGG_ROOT.is_dir(), reason=f"LGG data not found at {LGG_ROOT} (set CAMSEG_LGG_ROOT)")
def test_real_lgg_counts():
    before = os.stat(LGG_ROOT).st_mtime_ns
    ds = data.load_lgg(LGG_ROOT, size=None, progress=False)
    m = ds.manifest
    assert m.patient.nunique() == 80
    assert len(m) == 2914
    assert int(m.tumour.sum()) == 1014
    assert ds.images.shape[1:] == (256, 256, 3)
    split = data.split_patients(m, seed=0)
    assert split.groupby("patient")["split"].nunique().max() == 1
    assert os.stat(LGG_ROOT).st_mtime_ns == before


def test_folds_are_disjoint_cover_every_patient_and_keep_sites_in_proportion():
    ds = data.generate_synthetic(n_patients=20, size=32, seed=0, progress=False)
    k, tests = 4, []
    for fold in range(k):
        m = data.fold_patients(ds.manifest, k, fold, seed=3)
        assert m.groupby("patient")["split"].nunique().max() == 1  # whole patients only
        per = m.groupby("split")["patient"].nunique()
        assert per["test"] == 5 and per["val"] >= 1 and per["train"] > per["val"]
        # each site (4 sites x 5 patients) gives every fold one or two of its patients
        assert m[m.split == "test"].groupby("institution")["patient"].nunique().between(1, 2).all()
        tests.append(set(m.loc[m.split == "test", "patient"]))
    assert set().union(*tests) == set(ds.manifest.patient) and sum(map(len, tests)) == 20
    again = data.fold_patients(ds.manifest, k, 2, seed=3)
    assert again.equals(data.fold_patients(ds.manifest, k, 2, seed=3))  # same seed, same folds
    built = data.build_dataset("synthetic", image_size=32, n_patients=20, seed=3, progress=False, folds=k, fold=2)
    assert set(built.manifest.loc[built.manifest.split == "test", "patient"]) == tests[2]


def test_fold_errors_name_the_parameter():
    ds = data.generate_synthetic(n_patients=8, size=32, seed=0, progress=False)
    with pytest.raises(data.DataError, match="folds=1"):
        data.fold_patients(ds.manifest, 1, 0)
    with pytest.raises(data.DataError, match="folds=9: expected 2 to 8"):
        data.fold_patients(ds.manifest, 9, 0)
    with pytest.raises(data.DataError, match="fold=4: expected 0 to 3"):
        data.fold_patients(ds.manifest, 4, 4)
    with pytest.raises(data.DataError, match="fold=1.5"):
        data.fold_patients(ds.manifest, 4, 1.5)
    with pytest.raises(data.DataError, match="validation shares above 0"):
        data.fold_patients(ds.manifest, 4, 0, (1.0, 0.0, 0.0))
