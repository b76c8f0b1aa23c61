"""GaLore's gradient projector (Zhao et al. 2024, Algorithm 2) as plain functions over plain tensors.

The projector matrices live in the optimizer state as ordinary tensors (never a Python object), so
`state_dict()` round-trips and loads with `torch.load(weights_only=True)`.

Sides, for a gradient G of shape (m, n) and rank r:
  left:  P = U[:, :r]          (m x r);  R = P^T G     (r x n);  back: P R
  right: Q = Vh[:r, :]         (r x n);  R = G Q^T     (m x r);  back: R Q
  both:  P, Q as above;                  R = P^T G Q^T (r x r);  back: P R Q   (the paper's Eq. 3)
`proj_type` names follow galore-torch: std projects on the smaller side, reverse_std on the larger.
"""

from __future__ import annotations

import torch

PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
SVD_METHODS = ("exact", "randomized", "auto")
# `auto` takes the randomized SVD where rank <= min(m, n) / RANDOMIZED_MAX_FRACTION_INV: there `make bench`
# measured it 1.8-9x faster on every LLaMA-20M/60M shape with >= 99.89% of the exact subspace's gradient energy
# (results/bench/projector.json); at larger ranks it is as slow as the exact SVD or slower.
RANDOMIZED_MAX_FRACTION_INV = 8


def choose_svd(shape, rank: int, svd: str) -> str:
    """Resolve `svd` for one matrix: exact and randomized stay; auto picks by the rank's share of min(m, n)."""
    if svd != "auto":
        return svd
    return "randomized" if rank * RANDOMIZED_MAX_FRACTION_INV <= min(shape) else "exact"


class NonFiniteGradientError(RuntimeError):
    """A gradient holds NaN or Inf where a projector must be computed from it."""


class SVDFailedError(RuntimeError):
    """The SVD of a gradient did not converge, even in float64."""


def projection_side(shape: torch.Size | tuple[int, ...], proj_type: str) -> str:
    m, n = shape
    if proj_type == "std":
        return "right" if m >= n else "left"
    if proj_type == "reverse_std":
        return "left" if m >= n else "right"
    if proj_type in ("left", "right"):
        return proj_type
    if proj_type == "full":
        return "both"
    raise ValueError(f"proj_type must be one of {', '.join(PROJ_TYPES)}, got {proj_type!r}.")


def low_rank_shape(shape, rank: int, side: str) -> tuple[int, int]:
    m, n = shape
    r = min(rank, m, n)
    return {"left": (r, n), "right": (m, r), "both": (r, r)}[side]


def canonical_signs(U: torch.Tensor, Vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each singular vector (a column of U, a row of Vh) flipped so that its entry of largest magnitude is
    positive. An SVD fixes each vector only up to sign, and LAPACK's choice can flip under a change of the
    gradient in the 5th digit (the order of a data-parallel reduction); GaLore keeps its Adam moments across a
    refresh, so a flipped vector turns that moment's sign and the trajectory with it. With this convention the
    projector is a function of the subspace: 1, 2 or 4 processes, DDP or FSDP, compute the same one."""
    u_sign = torch.sign(U.gather(0, U.abs().argmax(dim=0, keepdim=True)))
    v_sign = torch.sign(Vh.gather(1, Vh.abs().argmax(dim=1, keepdim=True)))
    return U * torch.where(u_sign == 0, 1.0, u_sign).to(U.dtype), Vh * torch.where(v_sign == 0, 1.0, v_sign).to(Vh.dtype)


SIGNS = ("canonical", "lapack")  # singular vectors' signs: canonical_signs, or as LAPACK returns them (galore-torch)


def _svd(matrix: torch.Tensor, rank: int, method: str, name: str, seed: int, *, signs: str = "canonical"):
    """Top-`rank` singular vectors of `matrix`, in float32 (float64 on a retry)."""
    fix = canonical_signs if signs == "canonical" else (lambda U, Vh: (U, Vh))
    if not bool(torch.isfinite(matrix).all()):
        raise NonFiniteGradientError(
            f"The gradient of {name} contains NaN or Inf, so no projector can be computed from it; "
            "lower the learning rate, enable gradient clipping, or check the data for this step."
        )
    work = matrix.float()
    for dtype in (torch.float32, torch.float64):
        try:
            if method == "randomized":
                # svd_lowrank draws from the global RNG: fork it with a fixed seed so training's own random
                # stream (dropout, data order) is untouched and a resumed run draws the same sketch.
                devices = [work.device] if work.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed)
                    q = min(2 * rank, *work.shape)  # oversampling keeps the subspace close to the exact one
                    U, _, V = torch.svd_lowrank(work.to(dtype), q=q, niter=2)
                return fix(U[:, :rank], V[:, :rank].T)
            U, _, Vh = torch.linalg.svd(work.to(dtype), full_matrices=False)
            return fix(U[:, :rank], Vh[:rank, :])
        except torch.linalg.LinAlgError:
            continue
    raise SVDFailedError(
        f"The SVD of the gradient of {name} {tuple(matrix.shape)} did not converge in float32 nor float64; "
        "the gradient is probably ill-conditioned: lower the learning rate or use svd=randomized."
    )


def column_major(x: torch.Tensor) -> torch.Tensor:
    """A compact copy of the matrix x laid out column by column (strides (1, rows)), as LAPACK writes one."""
    return x.t().contiguous().t()


def compute_projection(
    grad: torch.Tensor, rank: int, side: str, svd: str = "exact", name: str = "a parameter", *, seed: int = 0,
    signs: str = "canonical",
):
    """Return (P, Q): P for the left side (m x r) or None; Q for the right side (r x n) or None.
    Matches galore-torch: the SVD runs on the gradient in float32 and the result is cast back; with
    signs="lapack" and svd="exact" the vectors are LAPACK's own, as galore-torch's (and transformers') are."""
    if svd not in SVD_METHODS:
        raise ValueError(f"svd must be one of {', '.join(SVD_METHODS)}, got {svd!r}.")
    if signs not in SIGNS:
        raise ValueError(f"signs must be one of {', '.join(SIGNS)}, got {signs!r}.")
    U, Vh = _svd(grad, rank, choose_svd(grad.shape, rank, svd), name, seed, signs=signs)
    # LAPACK returns column-major U and Vh, and a GEMM with a row-major copy rounds differently in the last bit:
    # signs="lapack" keeps them column-major, as galore-torch's views of them are (its products, to the bit),
    # in a compact copy (a view would keep the whole U or Vh alive in the optimizer state).
    layout = column_major if signs == "lapack" else torch.Tensor.contiguous
    P = layout(U.to(grad.dtype)) if side in ("left", "both") else None
    Q = layout(Vh.to(grad.dtype)) if side in ("right", "both") else None
    return P, Q


FLOAT64_CHUNK_ROWS = 1024  # rows of G converted to float64 at a time: a bounded temporary


def left_sum_float64(grad: torch.Tensor, P) -> torch.Tensor:
    """P^T G summed in float64 over chunks of G's rows, not rounded: any split of the rows (FSDP's shards,
    then a float64 sum over the ranks) rounds to the same value once cast back, but for an exact tie."""
    out = grad.new_zeros((P.shape[1], grad.shape[1]), dtype=torch.float64)
    for s in range(0, grad.shape[0], FLOAT64_CHUNK_ROWS):
        out.addmm_(P[s:s + FLOAT64_CHUNK_ROWS].double().t(), grad[s:s + FLOAT64_CHUNK_ROWS].double())
    return out


def project(grad: torch.Tensor, side: str, P, Q, exact: bool = False) -> torch.Tensor:
    """The projected gradient R. `exact` (the exact_projection setting) computes it so that FSDP's row
    shards give the same R to the last bit (optim/sharded.py): left, float64 sums rounded once; full,
    P^T (G Q^T), whose G Q^T is row by row what each shard computes. 8-bit moments turn a last-bit
    difference into another quantization level now and then, so only then do N processes match one."""
    if exact and side == "left":
        return left_sum_float64(grad, P).to(grad.dtype)
    if exact and side == "both":
        return torch.matmul(P.t(), grad @ Q.t())
    if side == "left":
        return torch.matmul(P.t(), grad)
    if side == "right":
        return torch.matmul(grad, Q.t())
    return torch.matmul(P.t(), grad) @ Q.t()


def project_back(low: torch.Tensor, side: str, P, Q) -> torch.Tensor:
    if side == "left":
        return torch.matmul(P, low)
    if side == "right":
        return torch.matmul(low, Q)
    return torch.matmul(P, low) @ Q


def add_projected_back(p: torch.Tensor, low: torch.Tensor, side: str, P, Q, *, alpha: float, beta: float = 1.0) -> None:
    """p <- beta p + alpha project_back(low), in place, as one GEMM (addmm_) into p's memory: no m x n
    temporary, and no separate pass over p to add it (nor to decay it when beta != 1)."""
    if side == "left":
        p.addmm_(P, low, beta=beta, alpha=alpha)
    elif side == "right":
        p.addmm_(low, Q, beta=beta, alpha=alpha)
    else:
        p.addmm_(torch.matmul(P, low), Q, beta=beta, alpha=alpha)
