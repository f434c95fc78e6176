"""The two device-path CAM methods that read no gradient: EigenCAM's projection and ScoreCAM's weights.

:func:`.cams.many_cams` gets the activations (and gradients) of every layer once and computes the
gradient methods from them in a few lines; EigenCAM and ScoreCAM need more: EigenCAM the first
principal direction of each image's activations, oriented as pytorch-grad-cam orients it (numpy's
LAPACK: a batched QR, then the SVD of the small factor, see :func:`principal_directions`), and
ScoreCAM a forward pass of every activation-masked image. Apart from :mod:`.cams` because that
reproduction of the library's numerics is a job of its own, tested on its own
(``tests/test_cams.py``); this module imports nothing from :mod:`.cams`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from threadpoolctl import ThreadpoolController


def principal_directions(m: torch.Tensor) -> torch.Tensor:
    """First right singular vector of each N x P x C matrix, oriented as pytorch-grad-cam's EigenCAM orients it.

    The library takes ``VT[0]`` of numpy's full SVD of each image's centred P x C activations
    (LAPACK ``dgesdd``: numpy computes float32 input in float64). A singular vector's sign is
    arbitrary; the library's is whatever ``dgesdd`` returns, a deterministic function of the
    matrix that no closed-form rule (largest entry positive, positive sum, ...) reproduces.
    Where P >= 11/6 C, ``dgesdd`` first reduces the matrix to the C x C triangular factor R of
    its Householder QR (``dgeqrf``) and takes the singular vectors of R; where C >= 11/6 P, it
    reduces to the P x P factor L of its LQ and maps back through Q. This function takes the
    same route with numpy's own LAPACK: ``numpy.linalg.qr`` (``dgeqrf``, batched) for the
    factor, then ``dgesdd`` on the small square factor only, at the cost of a C x C SVD
    instead of the full one with its P x P matrix U. In between (neither dimension 11/6 of
    the other) numpy's thin SVD of the whole matrix is used, which takes the same route to
    ``VT`` as the full one.

    The factor must come from the LAPACK numpy links, not torch's: where a dead channel
    makes the matrix rank-deficient, a factor off in its 14th digit (torch's ``qr`` on the
    CPU) flips the sign of some maps, and float32 factors flip more. What equality holds:
    the direction up to float rounding wherever the first two singular values are apart, and
    the library's sign on every matrix tested (random matrices with dead channels in
    tests/test_cams.py, untrained and trained small CNNs' activations). A numpy built on
    another LAPACK (e.g. MKL) would orient some maps otherwise, and the library with it.
    """
    n, p, c = m.shape
    mnthr = int(min(p, c) * 11.0 / 6.0)  # dgesdd's switch to a QR / LQ first
    m64 = m.detach().cpu().double().numpy()
    with _blas().limit(limits=1, user_api="blas"):
        if p >= c and p >= mnthr:
            v = np.linalg.svd(np.linalg.qr(m64, mode="r"))[2][:, 0]
        elif c > p and c >= mnthr:
            q, r = np.linalg.qr(m64.transpose(0, 2, 1))  # M^T = Q R, so M = R^T Q^T (LQ)
            vl = np.linalg.svd(r.transpose(0, 2, 1))[2][:, 0]
            v = (q @ vl[..., None])[..., 0]
        else:
            v = np.linalg.svd(m64.astype(np.float32), full_matrices=False)[2][:, 0]
    return torch.from_numpy(np.ascontiguousarray(v)).to(m)


@functools.cache
def _blas() -> ThreadpoolController:
    """numpy's BLAS, to run :func:`principal_directions`' factorisations on one thread.

    They are many small ones (one per image), each a long series of level-2 BLAS calls too small to
    share: OpenBLAS 0.3.31 (numpy 2.4's wheels) took 6.8 s on 2 threads against 0.08 s on one for 32
    QR factorisations of 4096 x 32 on 2 cores of an AMD EPYC, which made EigenCAM the bulk of 03.
    """
    return ThreadpoolController()


def library_means(a: torch.Tensor) -> torch.Tensor:
    """Each image's channel means (N x C) with the bits pytorch-grad-cam's EigenCAM centres by.

    The orientation :func:`principal_directions` reproduces is a function of the exact centred
    matrix: a mean off in its last bit (torch and numpy sum in different orders, and numpy's
    order follows the array's memory layout) flips the sign of some maps. So the means are
    numpy's, from the activations laid out as the library lays them out; only these N x C
    numbers come from the CPU.
    """
    acts = a.detach().cpu().numpy().copy()  # the library's copy: C order, whatever the tensor's layout
    return torch.from_numpy(np.stack([r.reshape(r.shape[0], -1).transpose().mean(axis=0) for r in acts]))


def eigen_projection(a: torch.Tensor) -> torch.Tensor:
    """EigenCAM's map (before ReLU): each image's centred activations projected on their first principal direction."""
    n, c, h, w = a.shape
    a = torch.nan_to_num(a, nan=0.0)
    m = a.reshape(n, c, h * w).transpose(1, 2)
    m = m - library_means(a).to(m)[:, None, :]
    v = principal_directions(m)
    return (m @ v[..., None]).reshape(n, h, w)


def score_batch(device: torch.device) -> int:
    """ScoreCAM's default batch of masked images: large on a GPU, which small batches leave idle;
    small on the CPU, where a batch of 16 images of 128 x 128 stays in cache and a batch of 64
    runs slower per image (``benchmarks/bench_cams.py --study`` times ScoreCAM at this default)."""
    return 256 if device.type == "cuda" else 16


def score_weights(
    model: nn.Module, x: torch.Tensor, a: torch.Tensor, target: int, batch_size: int | None = None,
) -> torch.Tensor:
    """ScoreCAM's channel weights, N x C: softmax over channels of the target logit of each activation-masked image.

    As pytorch-grad-cam: each channel's map is resized to the image (bilinear, corners
    aligned), min-max scaled to [0, 1] and multiplied into the image; the N x C masked images
    go through ``model`` in batches of ``batch_size`` (default :func:`score_batch`), whatever
    image they come from.
    """
    batch_size = batch_size or score_batch(x.device)
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
