import numpy as np
import pytest
import torch

from camseg_utils import classification, data, models, train
from camseg_utils.data import DataError
from camseg_utils.models import ModelError
from camseg_utils.train import CheckpointError


@pytest.mark.parametrize("arch", models.architectures())
def test_each_architecture_runs_forward_backward_and_names_layers(arch):
    torch.manual_seed(0)
    m = models.build_model(arch)
    x = torch.randn(2, 3, 64, 64)
    acts = {}
    hooks = [models.get_layer(m, arch, name).register_forward_hook(lambda mod, i, o, n=name: acts.__setitem__(n, o))
             for name in ("last", "middle", "early")]
    out = m(x)
    assert out.shape == (2, 2)
    out[:, 1].sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    for h in hooks:
        h.remove()
    # the named layers' grids: early twice as fine as middle, middle twice as fine as last
    assert acts["early"].shape[-2:] == tuple(2 * s for s in acts["middle"].shape[-2:])
    assert acts["middle"].shape[-2:] == tuple(2 * s for s in acts["last"].shape[-2:])
    assert set(models.layer_names(arch)) >= {"last", "middle", "early"}
    assert not any(getattr(mod, "inplace", False) for mod in m.modules())


def test_unknown_architecture_and_layer_list_the_options():
    with pytest.raises(ModelError, match="known: small_cnn, resnet18"):
        models.build_model("alexnet")
    with pytest.raises(ModelError, match="known: last, middle, early, layer2"):
        models.resolve_layer("resnet18", "layer9")


def test_missing_pretrained_weights_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ModelError, match="does not exist.*never downloads"):
        models.build_model("resnet18", pretrained=True)
    with pytest.raises(ModelError, match="no ImageNet weights"):
        models.build_model("small_cnn", pretrained=True)
    # a weights file that exists is loaded
    base = __import__("torchvision").models.resnet18(weights=None)
    torch.save(base.state_dict(), tmp_path / "r18.pth")
    m = models.build_model("resnet18", pretrained=str(tmp_path / "r18.pth"))
    assert torch.equal(m.layer1[0].conv1.weight, base.layer1[0].conv1.weight)


@pytest.fixture(scope="module")
def tiny():
    return data.build_dataset("synthetic", image_size=32, n_patients=12, seed=0, progress=False)


def test_training_lowers_the_loss_and_checkpoint_roundtrips(tiny, tmp_path):
    tr, va = tiny.split("train"), tiny.split("val")
    cfg = train.TrainConfig(arch="small_cnn", epochs=4, batch_size=16, lr=3e-3, device="cpu")
    rec = train.train_classifier(tr, va, cfg, tmp_path / "m", split_hash="abc", progress=False)
    h = rec["history"]
    assert len(h) == 4 and h[-1]["train_loss"] < h[0]["train_loss"]
    assert rec["arch"] == "small_cnn" and rec["image_size"] == 32 and rec["split_hash"] == "abc"
    assert {"torch", "torchvision"} <= set(rec["versions"]) and len(rec["norm_mean"]) == 3
    model, norm, meta = train.load_classifier(tmp_path / "m" / "best.pt", arch="small_cnn", image_size=32, split_hash="abc")
    p1 = train.predict(model, norm, va.images)
    p2 = train.predict(model, norm, va.images)
    assert p1.shape == (len(va),) and np.array_equal(p1, p2) and ((p1 >= 0) & (p1 <= 1)).all()
    for kwargs, word in (({"arch": "resnet18"}, "arch"), ({"image_size": 64}, "image_size"), ({"split_hash": "x"}, "split_hash")):
        with pytest.raises(CheckpointError, match=word):
            train.load_classifier(tmp_path / "m" / "best.pt", **kwargs)


def test_interrupted_training_resumes_where_it_stopped(tiny, tmp_path, monkeypatch):
    tr, va = tiny.split("train"), tiny.split("val")
    cfg = train.TrainConfig(epochs=3, batch_size=16, device="cpu")
    full = train.train_classifier(tr, va, cfg, tmp_path / "a", split_hash="h", progress=False)
    real_predict, calls = train.predict, []

    def crash_in_third_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(train, "predict", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.train_classifier(tr, va, cfg, tmp_path / "b", split_hash="h", progress=False)
    monkeypatch.setattr(train, "predict", real_predict)
    resumed = train.train_classifier(tr, va, cfg, tmp_path / "b", split_hash="h", progress=False)
    drop = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert drop(resumed["history"]) == drop(full["history"])
    # resuming a finished training re-saves best.pt byte for byte, so its hash (the heatmap caches' key) holds
    before = (tmp_path / "b" / "best.pt").read_bytes()
    again = train.train_classifier(tr, va, cfg, tmp_path / "b", split_hash="h", progress=False)
    assert again["history"] == resumed["history"] and (tmp_path / "b" / "best.pt").read_bytes() == before


def test_a_last_pt_of_an_older_camseg_is_not_resumed(tiny, tmp_path):
    tr, va = tiny.split("train"), tiny.split("val")
    cfg = train.TrainConfig(epochs=2, batch_size=16, device="cpu")
    full = train.train_classifier(tr, va, cfg, tmp_path / "a", split_hash="h", progress=False)
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    state["epoch"], state["history"] = 1, state["history"][:1]  # as if interrupted after epoch 1 ...
    del state["aug_generator"]  # ... by a version that did not save the augmentation generator
    (tmp_path / "b").mkdir()
    torch.save(state, tmp_path / "b" / "last.pt")
    with pytest.warns(UserWarning, match="lacks aug_generator .* from the first epoch"):
        again = train.train_classifier(tr, va, cfg, tmp_path / "b", split_hash="h", progress=False)
    drop = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert drop(again["history"]) == drop(full["history"])


def test_same_seed_same_model(tiny, tmp_path):
    tr, va = tiny.split("train"), tiny.split("val")
    cfg = train.TrainConfig(epochs=1, batch_size=16, device="cpu")
    a = train.train_classifier(tr, va, cfg, tmp_path / "a", progress=False)
    b = train.train_classifier(tr, va, cfg, tmp_path / "b", progress=False)
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    assert a["best"] == b["best"]


def test_split_without_a_class_is_refused(tiny, tmp_path):
    tr, va = tiny.split("train"), tiny.split("val")
    only_tumour = tr.subset(tr.manifest.tumour.to_numpy())
    with pytest.raises(DataError, match="train split .* no tumour-free slice"):
        train.train_classifier(only_tumour, va, train.TrainConfig(epochs=1), tmp_path, progress=False)


def test_metrics_match_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1).round(2)  # ties on purpose
    m = classification.classification_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    (tn, fp), (fn, tp) = m["confusion"]
    assert tn + fp + fn + tp == 200 and m["accuracy"] == pytest.approx((tp + tn) / 200)
    assert np.isnan(classification.roc_auc(np.ones(5), np.random.rand(5)))


def test_augmentation_flips_rotates_moves_masks_alike_and_is_deterministic_under_a_seed():
    import math

    n, s = 32, 64
    x = torch.rand(n, 3, s, s)
    y = train.augment_batch(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)
    assert torch.equal(y, train.augment_batch(x, torch.Generator().manual_seed(0)))  # the seed fixes it
    assert not torch.equal(y, train.augment_batch(x, torch.Generator().manual_seed(1)))
    # a horizontal bar across the left half, as a mask: the documented draws (first a flip with probability
    # 1/2, then an angle in +-10 deg) say where it must land: a flipped one in the right half, and its slope
    # in pixels is -tan(angle), mirrored by the flip
    bar = torch.zeros(n, 1, s, s)
    bar[:, :, s // 2 - 1:s // 2 + 2, :s // 2] = 1
    r = torch.rand(n, 8, generator=torch.Generator().manual_seed(0))
    flip, angle = r[:, 0] < 0.5, (r[:, 1] - 0.5) * 2 * math.radians(10)
    assert flip.any() and (~flip).any() and angle.abs().max() > math.radians(5)
    y2, moved = train.augment_batch(x, torch.Generator().manual_seed(0), bar)
    assert torch.equal(y2, y)  # masks ride along without changing the images' draws
    for i in range(n):
        rows, cols = np.nonzero(moved[i, 0].numpy())
        assert (cols.mean() > s / 2) == bool(flip[i]), i
        want = -math.tan(angle[i]) * (-1 if flip[i] else 1)
        assert np.polyfit(cols, rows, 1)[0] == pytest.approx(want, abs=0.04), i


def test_training_precision_and_layout_follow_the_device_and_a_checkpoint_of_another_is_not_reused(tiny, tmp_path, monkeypatch):
    from camseg_utils import device as dev_mod
    from camseg_utils import unet

    cpu = torch.device("cpu")
    monkeypatch.setattr(dev_mod, "native_bf16", lambda d: True)  # bfloat16 where a CPU has it natively ...
    monkeypatch.delenv(dev_mod.FP32_ENV, raising=False)
    assert dev_mod.train_bf16(cpu)
    monkeypatch.setenv(dev_mod.FP32_ENV, "1")  # ... unless the environment asks for float32
    assert not dev_mod.train_bf16(cpu)
    monkeypatch.setattr(dev_mod, "native_bf16", lambda d: False)
    monkeypatch.delenv(dev_mod.FP32_ENV)
    assert not dev_mod.train_bf16(cpu)
    assert dev_mod.native_bf16(torch.device("meta")) is False

    tr, va = tiny.split("train"), tiny.split("val")
    cfg = train.TrainConfig(epochs=1, batch_size=16, device="cpu")
    fp32 = train.train_classifier(tr, va, cfg, tmp_path / "c", split_hash="h", progress=False)
    u32 = unet.train_unet(tr, va, tmp_path / "u", epochs=1, width=4, device="cpu", progress=False)[2]
    assert fp32["precision"] == u32["config"]["precision"] == "float32"
    monkeypatch.setattr(dev_mod, "native_bf16", lambda d: True)  # the same folder on a CPU with bfloat16
    bf16 = train.train_classifier(tr, va, cfg, tmp_path / "c", split_hash="h", progress=False)
    u16 = unet.train_unet(tr, va, tmp_path / "u", epochs=1, width=4, device="cpu", progress=False)[2]
    assert bf16["precision"] == u16["config"]["precision"] == "bfloat16"
    # the U-Net leaves channels-last only under bfloat16 on a CPU, and says so
    assert (u32["config"]["layout"], u16["config"]["layout"]) == ("channels_last", "contiguous")
    assert unet.training_layout(torch.device("meta"), True) == torch.channels_last  # any other device
    # trained afresh in bfloat16, not the float32 networks served again
    assert bf16["history"][0]["train_loss"] != fp32["history"][0]["train_loss"]
    assert u16["history"][0]["train_loss"] != u32["history"][0]["train_loss"]
    again = train.train_classifier(tr, va, cfg, tmp_path / "c", split_hash="h", progress=False)
    assert again["history"] == bf16["history"]  # and that one is resumed as finished
