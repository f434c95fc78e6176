"""The two device-path CAM methods that read no gradient: EigenCAM's projection and ScoreCAM's weights.

:func:`.cams.many_cams` gets the activations (and gradients) of every layer once and computes the
gradient methods from them in a few lines; EigenCAM and ScoreCAM need more: EigenCAM the first
principal direction of each image's activations, oriented as pytorch-grad-cam orients it (a
batched QR and numpy's LAPACK SVD of the small factor, see :func:`principal_directions`), and
ScoreCAM a forward pass of every activation-masked image. Apart from :mod:`.cams` because that
reproduction of the library's numerics is a job of its own, tested on its own
(``tests/test_cams.py``); this module imports nothing from :mod:`.cams`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def principal_directions(m: torch.Tensor) -> torch.Tensor:
    """First right singular vector of each N x P x C matrix, oriented as pytorch-grad-cam's EigenCAM orients it.

    The library takes ``VT[0]`` of numpy's full SVD of each image's centred P x C activations
    (LAPACK ``dgesdd``: numpy computes float32 input in float64). A singular vector's sign is
    arbitrary; the library's is whatever ``dgesdd`` returns, a deterministic function of the
    matrix that no closed-form rule (largest entry positive, positive sum, ...) reproduces.
    Where P >= 11/6 C, ``dgesdd`` first reduces the matrix to the C x C triangular factor R of
    its Householder QR and takes the singular vectors of R; where C >= 11/6 P, it reduces to
    the P x P factor L of its LQ and maps back through Q. Householder factors have a sign
    convention fixed by LAPACK (the same in every implementation), so this function computes
    them batched on the device in float64 (``torch.linalg.qr``), then runs numpy's ``dgesdd``
    on the small square factor only: the same routine on the same reduced matrix gives the
    library's orientation, at the cost of a C x C SVD instead of the full one with its P x P
    matrix U. In between (neither dimension 11/6 of the other) numpy's thin SVD of the whole
    matrix is used, which takes the same route to ``VT`` as the full one.

    What equality holds: the direction up to float rounding wherever the first two singular
    values are apart, and the library's sign on every matrix tested (random matrices with
    dead channels in tests/test_cams.py, and a trained small CNN's activations on LGG
    slices); float32 factors are not enough (a dead channel's exact zeros then flip some
    signs). A numpy built on another LAPACK (e.g. MKL) may orient some maps otherwise, and
    so would the library there.
    """
    n, p, c = m.shape
    mnthr = int(min(p, c) * 11.0 / 6.0)  # dgesdd's switch to a QR / LQ first
    m64 = m.double()
    if p >= c and p >= mnthr:
        r = torch.linalg.qr(m64, mode="r").R.cpu().numpy()
        v = np.linalg.svd(r)[2][:, 0]
    elif c > p and c >= mnthr:
        q, r = torch.linalg.qr(m64.transpose(1, 2), mode="reduced")  # M^T = Q R, so M = R^T Q^T (LQ)
        vl = np.linalg.svd(r.transpose(1, 2).cpu().numpy())[2][:, 0]
        return (q @ torch.from_numpy(vl).to(q)[..., None])[..., 0].to(m.dtype)
    else:
        v = np.linalg.svd(m.float().cpu().numpy(), full_matrices=False)[2][:, 0]
    return torch.from_numpy(np.ascontiguousarray(v)).to(m)


def eigen_projection(a: torch.Tensor) -> torch.Tensor:
    """EigenCAM's map (before ReLU): each image's centred activations projected on their first principal direction."""
    n, c, h, w = a.shape
    m = a.reshape(n, c, h * w).transpose(1, 2)
    m = torch.nan_to_num(m, nan=0.0)
    m = m - m.mean(1, keepdim=True)
    v = principal_directions(m)
    return (m @ v[..., None]).reshape(n, h, w)


def score_weights(
    model: nn.Module, x: torch.Tensor, a: torch.Tensor, target: int, batch_size: int = 64,
) -> torch.Tensor:
    """ScoreCAM's channel weights, N x C: softmax over channels of the target logit of each activation-masked image.

    As pytorch-grad-cam: each channel's map is resized to the image (bilinear, corners
    aligned), min-max scaled to [0, 1] and multiplied into the image; the N x C masked images
    go through ``model`` in batches of ``batch_size``, whatever image they come from.
    """
    n, c = a.shape[:2]
    with torch.inference_mode():
        up = F.interpolate(a.float(), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=True)
        lo, hi = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
        up = (up - lo) / (hi - lo + 1e-8)
        # a channel constant over the image scales to an all-zero mask, so its masked image is
        # all zeros whatever the image: scored once, not once per such channel
        live = (hi - lo).flatten() > 0
        scores = model(torch.zeros_like(x[:1]))[0, target].float().expand(n * c).clone()
        todo = torch.nonzero(live)[:, 0]
        for i in range(0, len(todo), batch_size):
            k = todo[i:i + batch_size]
            masked = x[k // c] * up[k // c, k % c][:, None]
            if x.is_contiguous(memory_format=torch.channels_last):
                masked = masked.contiguous(memory_format=torch.channels_last)
            scores[k] = model(masked)[:, target].float()
        return torch.softmax(scores.view(n, c), -1)
