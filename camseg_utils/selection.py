"""Choosing a segmentation setting on one split: :func:`sweep` scores every (rule, value, head gate,
classifier gate, clean-up) of a set of heatmaps, :func:`sweep_settings` adds the heatmap scale and
the guided refinement, :func:`best_settings` picks per refinement, and :func:`apply_setting` turns a
chosen row back into masks. A row holds everything needed to apply it again, so a setting chosen on
validation is applied unchanged to test (:mod:`.protocol`) or to new patients (:mod:`.evaluate`).
"""

from __future__ import annotations

import numpy as np

from .masks import NORMALISATIONS, global_scale, mask_counts, raw_peaks, scaled_heatmaps, to_masks
from .morphology import SegmentError
from .refinement import GUIDE_CHANNEL, GUIDED_EPS, refine

SELECT_BY = ("mean_dice", "patient_dice")


def setting_heatmaps(heatmaps, setting, images: np.ndarray | None = None, device=None):
    """``heatmaps`` refined as a chosen setting says (its ``guided_radius``, ``guided_eps``, ``guide_channel``;
    a setting without them means no refinement). Heatmaps that :func:`.refinement.refine` already made
    with those values (their ``meta`` says so) are returned as they are."""
    radius = int(setting.get("guided_radius", 0) or 0)
    if not radius:
        return heatmaps
    eps, channel = float(setting.get("guided_eps", GUIDED_EPS)), int(setting.get("guide_channel", GUIDE_CHANNEL))
    meta = heatmaps.meta or {}
    if (meta.get("guided_radius"), meta.get("guided_eps"), meta.get("guide_channel")) == (radius, eps, channel):
        return heatmaps
    if images is None:
        raise SegmentError(f"this setting refines heatmaps with a guided filter (radius {radius}): pass the images")
    return refine(heatmaps, images, radius, eps, channel, device)


def apply_setting(heatmaps, setting, heads: np.ndarray | None = None, probs: np.ndarray | None = None,
                  reference: float | None = None, images: np.ndarray | None = None, device=None) -> np.ndarray:
    """Masks from a :class:`camseg_utils.heatmap_cache.Heatmaps` with one chosen setting (a sweep row with its
    ``normalisation``, as a dict or pandas row); the global scale is ``reference`` or ``setting['reference']``.
    Settings with a guided refinement need the ``images`` (see :func:`setting_heatmaps`)."""
    ref = reference if reference is not None else setting.get("reference")
    h = scaled_heatmaps(setting_heatmaps(heatmaps, setting, images, device), setting["normalisation"], ref)
    return to_masks(h, setting["rule"], setting["value"], heads if setting["head_gate"] else None, probs,
                    setting["prob_gate"], bool(setting["cleanup"]))


def sweep(
    heatmaps: np.ndarray, gt: np.ndarray, heads: np.ndarray, probs: np.ndarray, thresholds, top_ks,
    head_gates=(False, True), prob_gates=(0.0, 0.5), cleanups=(False,), patients: np.ndarray | None = None,
    device=None, select_by: str = "mean_dice", cleanup_candidates: int | None = 5,
) -> list[dict]:
    """Mean-Dice (and, given ``patients``, patient Dice) of every (rule, value, head gate, classifier
    gate, clean-up) on one split.

    Mask counts are made once per head gate on ``device`` (see :func:`mask_counts`); the classifier
    gate only empties whole slices, so it is applied to the per-slice counts afterwards. Clean-up
    works slice by slice on the CPU and costs far more than everything else, so it is tried only on
    the ``cleanup_candidates`` best settings without it (by ``select_by``); None tries it on every setting.
    """
    has = gt.reshape(len(gt), -1).any(1)
    if not has.any():
        raise SegmentError("this split has no tumour slice: mean-Dice is undefined, nothing to choose a threshold on")
    if select_by not in SELECT_BY or (select_by == "patient_dice" and patients is None):
        raise SegmentError(f"select_by={select_by!r}: expected 'mean_dice', or 'patient_dice' with patients given")
    h = np.asarray(heatmaps, np.float32)
    g = gt.reshape(len(gt), -1).sum(1)
    if patients is not None:
        codes, pid = np.unique(np.asarray(patients), return_inverse=True)
        g_pat = np.bincount(pid, g, len(codes))

    def counts(masks):
        flat = masks.reshape(len(masks), -1)
        return (flat & gt.reshape(len(gt), -1)).sum(1), flat.sum(1)

    def score(sets, head, cleanup):
        rows = []
        for gate in prob_gates:
            keep = np.ones(len(gt), bool) if probs is None or gate <= 0 else np.asarray(probs) >= gate
            for (rule, value), (inter, pred) in sets.items():
                inter, pred = np.where(keep, inter, 0), np.where(keep, pred, 0)
                row = {"rule": rule, "value": value, "head_gate": head, "prob_gate": gate, "cleanup": cleanup,
                       "mean_dice": float(np.mean(2 * inter[has] / (pred[has] + g[has])))}
                if patients is not None:
                    i_p, p_p = np.bincount(pid, inter, len(codes)), np.bincount(pid, pred, len(codes))
                    ok = p_p + g_pat > 0
                    row["patient_dice"] = float(np.mean(2 * i_p[ok] / (p_p[ok] + g_pat[ok]))) if ok.any() else float("nan")
                rows.append(row)
        return rows

    rows = []
    for head in head_gates:
        hd = heads if head else None
        inter, pred = mask_counts(h, gt, thresholds, top_ks, hd, device=device)
        keys = [("threshold", float(t)) for t in thresholds] + [("top_k", float(k)) for k in top_ks]
        sets = {key: (inter[:, j], pred[:, j]) for j, key in enumerate(keys)}
        sets[("otsu", 0.0)] = counts(to_masks(h, "otsu", 0, hd))
        rows += score(sets, head, False)
    if any(cleanups):
        plain = sorted(rows, key=lambda r: -r[select_by])
        todo = []  # (rule, value, head gate) settings to try with clean-up
        for r in plain:
            key = (r["rule"], r["value"], r["head_gate"])
            if key not in todo and (cleanup_candidates is None or len(todo) < cleanup_candidates):
                todo.append(key)
        for head in head_gates:
            hd = heads if head else None
            sets = {(rule, value): counts(to_masks(h, rule, value, hd, cleanup=True))
                    for rule, value, hg in todo if hg == head}
            rows += score(sets, head, True)
    if all(cleanups):
        rows = [r for r in rows if r["cleanup"]]
    return rows


def sweep_settings(
    heatmaps, images: np.ndarray, gt: np.ndarray, heads: np.ndarray, probs: np.ndarray, thresholds, top_ks,
    normalisations=NORMALISATIONS, guided_radii=(0,), guided_eps: float = GUIDED_EPS,
    guide_channel: int = GUIDE_CHANNEL, device=None, **sweep_kw,
) -> list[dict]:
    """:func:`sweep` of a :class:`camseg_utils.heatmap_cache.Heatmaps` on one (validation) split over every
    guided radius and heatmap scale as well. Each row carries what :func:`apply_setting` needs
    (``normalisation``, ``reference``, ``guided_radius``, ``guided_eps``, ``guide_channel``) and
    ``refinement``: 'none' (radius 0, the heatmap alone) or 'guided'. The global scale's reference is
    taken after refining, from this split's raw peaks."""
    if not len(guided_radii) or any(int(r) != r or r < 0 for r in guided_radii):
        raise SegmentError(f"guided_radii={list(guided_radii)}: expected whole numbers of pixels >= 0 (0: no refinement)")
    rows = []
    for rad in guided_radii:
        h = refine(heatmaps, images, int(rad), guided_eps, guide_channel, device)
        ref = global_scale(raw_peaks(h))
        extra = {"guided_radius": int(rad), "guided_eps": float(guided_eps), "guide_channel": int(guide_channel),
                 "reference": ref, "refinement": "guided" if rad else "none"}
        for nm in normalisations:
            rows += [dict(r, normalisation=nm, **extra)
                     for r in sweep(scaled_heatmaps(h, nm, ref), gt, heads, probs, thresholds, top_ks, device=device, **sweep_kw)]
    return rows


def best_settings(rows: list[dict], select_by: str = "mean_dice") -> dict[str, dict]:
    """The best row of :func:`sweep_settings` by ``select_by``, per ``refinement`` ('none', 'guided')."""
    best: dict[str, dict] = {}
    for r in rows:
        k = r.get("refinement", "none")
        if k not in best or r[select_by] > best[k][select_by]:
            best[k] = r
    return dict(sorted(best.items(), key=lambda kv: kv[0] != "none"))
