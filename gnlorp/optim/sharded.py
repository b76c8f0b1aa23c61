"""GaLoreAdamW's step on FSDP2 shards: every rank ends with exactly the parameters one process would have.

Under FSDP2 (`fully_shard` over a 1-D mesh) a weight W (m x n) and its gradient G are DTensors sharded by
rows (Shard(0)): rank i holds rows [i c, i c + m_i) with c = ceil(m / W) (the last ranks may hold fewer, or
none). G_i arrives already reduce-scattered (averaged over ranks) by FSDP. On these shards:

Refresh (every update_proj_gap steps): the rows G_i are all-gathered into G (m x n) and every rank runs the
same `compute_projection(G)` as one process would, so every rank holds the same P and/or Q, bit for bit equal
to one process's for the same G (the randomized SVD's seed depends on the step and the global shape only).
The equivalent reduction G^T G = sum_i G_i^T G_i (an all-reduce of n x n) gives the right singular vectors,
and G G^T needs the rows of all ranks anyway (its (i, j) block is G_i G_j^T), but the eigenvectors of a Gram
matrix are not the SVD's: they differ in sign and within near-degenerate subspaces and lose half the digits
(squared condition number), and GaLore keeps its Adam moments across a refresh, so a different basis means a
different trajectory. The gather costs one parameter-sized all-gather every T steps (FSDP itself all-gathers
every parameter in every forward), so exactness is bought for 1/T of a parameter all-gather per step.

Per step (b bytes per element, r = min(rank, m, n)):
  right (Q: r x n), the `std` choice for m >= n:  R_i = G_i Q^T (m_i x r) and back R_i Q are local: no
      communication; the moments (m_i x r) are sharded with the rows. In 8-bit this holds when every shard
      starts on a 256-element block of R (c r a multiple of 256, true for real LLaMA shapes); otherwise R
      goes the `flat` way below so its blocks are those of one process.
  left (P: m x r), `std` for m < n:  R = P^T G = sum_i P_i^T G_i (P_i: P's rows of this shard) is a sum over
      ranks: each rank reduce-scatters its r x n partial sum, runs Adam on its 1/W slice of R (block-aligned),
      and all-gathers the r x n Adam direction D; back P_i D is local.
  full (both): the same with the r x r partial sums P_i^T G_i Q^T.
`exact_projection` makes R independent of the sharding, so that 8-bit moments (which turn a last-bit
difference into another quantization level now and then: 3e-4 in the weights after 20 steps of
tests/e2e/fsdp_worker.py's galore8_left without it) match one process's: left, the partial sums are float64,
reduce-scattered as such (8 bytes an element) and rounded once; full, no reduce-scatter: every rank gathers
the rows of G Q^T (m x r) and computes R = P^T (G Q^T) as one process does (float64 sums would not do here:
right after a refresh R is nearly diagonal, and its off-diagonal entries are cancellation noise).
`flat` sizes: a reduce-scatter of W k elements and an all-gather of W k elements, k = ceil(N / W) for N = r n
(left), r r (full) or m r (right in 8-bit unaligned), rounded up to a multiple of 256 in 8-bit mode; that is
the bytes of one all-reduce of R, split so that the moments stay sharded (1/W of R's per rank). Against the
gradient's own reduce-scatter of m n elements per step (and FSDP's all-gather of m n in forward and again in
backward), the projection adds 2 W k b bytes (left, full) or nothing (right), plus m n b every T steps.

`projection_bytes_per_step` states this formula; tests/test_fsdp.py counts the bytes of every collective.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist

from .adam_math import BLOCKSIZE
from .projector import left_sum_float64, low_rank_shape, projection_side


def is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if is_sharded(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (all-gathered from FSDP's shards: a collective, every rank must call it)."""
    return t.full_tensor() if is_sharded(t) else t


def copy_rows_into(p: torch.Tensor, whole: torch.Tensor) -> None:
    """p <- whole, where p may be FSDP's row shard of it (every rank passes the same `whole`)."""
    if not is_sharded(p):
        p.copy_(whole)
        return
    shard = p.to_local()
    start = row_start(p.shape[0], p.device_mesh.size(), p.device_mesh.get_local_rank())
    shard.copy_(whole[start:start + shard.shape[0]])


def row_start(m: int, world: int, rank: int) -> int:
    """First row of `rank`'s shard of m rows (torch.chunk's split, as FSDP2's Shard(0))."""
    return min(rank * math.ceil(m / world), m)


class _Mesh(NamedTuple):
    group: object
    size: int
    rank: int


def _mesh(p) -> _Mesh:
    from torch.distributed.tensor import Shard

    if tuple(p.placements) != (Shard(0),):
        raise ValueError(f"GaLore on sharded parameters needs FSDP2's Shard(0) on a 1-D mesh, got {p.placements}")
    mesh = p.device_mesh
    return _Mesh(mesh.get_group(), mesh.size(), mesh.get_local_rank())


def flat_chunk(numel: int, world: int, eight_bit: bool) -> int:
    """Elements of R per rank in the `flat` layout (a whole number of 8-bit blocks in 8-bit mode)."""
    if eight_bit:
        return math.ceil(numel / (world * BLOCKSIZE)) * BLOCKSIZE
    return math.ceil(numel / world)


def layout(shape, rank: int, side: str, world: int, eight_bit: bool) -> str:
    """`local` (R sharded by the weight's rows, no communication) or `flat` (R reduce-scattered)."""
    if side != "right":
        return "flat"
    m = shape[0]
    rows_per_rank = math.ceil(m / world)
    if eight_bit and (rows_per_rank * low_rank_shape(shape, rank, side)[1]) % BLOCKSIZE:
        return "flat"
    return "local"


def projection_bytes_per_step(shape, rank: int, proj_type: str, world: int, eight_bit: bool,
                              *, element_bytes: int = 4, exact: bool = False) -> dict:
    """The documented per-step communication of the projection of one m x n weight (module docstring),
    as bytes of the full buffer of each collective; `refresh` is added on refresh steps only."""
    side = projection_side(shape, proj_type)
    m, n = shape
    refresh = world * math.ceil(m / world) * n * element_bytes
    if layout(shape, rank, side, world, eight_bit) == "local":
        return {"reduce_scatter": 0, "all_gather": 0, "refresh_all_gather": refresh}
    low = low_rank_shape(shape, rank, side)
    k = flat_chunk(low[0] * low[1], world, eight_bit)
    if exact and side == "both":  # G Q^T's rows gathered instead of a reduce-scatter of R
        gathered_gq = world * math.ceil(m / world) * low[1] * element_bytes
        return {"reduce_scatter": 0, "all_gather": gathered_gq + world * k * element_bytes,
                "refresh_all_gather": refresh}
    summed_bytes = 8 if exact and side == "left" else element_bytes  # float64 partial sums
    return {"reduce_scatter": world * k * summed_bytes, "all_gather": world * k * element_bytes,
            "refresh_all_gather": refresh}


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t, or a copy of it where it does not start on a 64-byte boundary. FSDP2 packs the shards of a block's
    tensors into one buffer, so a shard can start at any 4-byte offset (75 rows of V over 2 ranks: up_proj's
    shard after gate_proj's 38 magnitudes), and MKL's GEMM rounds some entries of a product 1 ulp apart when
    an operand starts off a 16-byte boundary; one process's parameters and gradients are allocated aligned."""
    return t if t.data_ptr() % 64 == 0 else t.clone()


def _addmm_into(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float) -> None:
    """weight <- beta weight + alpha a b, computed in aligned memory (_aligned) as one process computes it."""
    target = _aligned(weight)
    target.addmm_(a, b, beta=beta, alpha=alpha)
    if target is not weight:
        weight.copy_(target)


def _gather_rows(shard: torch.Tensor, m: int, group, world: int) -> torch.Tensor:
    """The full m x n matrix from every rank's rows (shards padded to c rows for the collective)."""
    c = math.ceil(m / world)
    padded = shard.new_zeros((c, *shard.shape[1:]))
    padded[: shard.shape[0]] = shard
    out = shard.new_empty((world * c, *shard.shape[1:]))
    dist.all_gather_into_tensor(out, padded.contiguous(), group=group)
    return out[:m]


def dense_layout(shape, world: int, eight_bit: bool) -> str:
    """An unprojected tensor's Adam: `local` on this rank's rows, or `flat` where 8-bit blocks counted from
    a shard's first element would not be one process's (a shard of c rows not starting on a 256-element
    block: a vocabulary of 129 x 48 over 2 ranks, 65 x 48 = 3120 elements)."""
    rows_per_rank = math.ceil(shape[0] / world)
    if eight_bit and rows_per_rank * math.prod(shape[1:]) % BLOCKSIZE:
        return "flat"
    return "local"


def _dense_flat(opt, p, state: dict, group: dict) -> None:
    """Adam on the `flat` layout: the moments cover this rank's slice of k = flat_chunk elements of the
    flattened tensor (whole 8-bit blocks, as one process's); the gradient and the weight are all-gathered,
    each rank steps its slice, and the stepped slices are all-gathered back into every rank's rows. Three
    all-gathers of the tensor a step: only for shapes whose row shards miss the blocks (toy sizes)."""
    pg, world, rank = _mesh(p)
    weight, grad = local(p), local(p.grad)
    m, numel = p.shape[0], p.numel()
    row = numel // m
    k = flat_chunk(numel, world, eight_bit=True)

    def my_slice(t):
        whole = t.new_zeros(world * k)
        whole[:numel] = _gather_rows(t.reshape(t.shape[0], row), m, pg, world).reshape(-1)
        return whole[rank * k:(rank + 1) * k].clone()

    g, w = my_slice(grad), my_slice(weight)
    if "exp_avg" not in state:
        opt._init_moments(state, g, numel=numel)
    opt._dense_adam(w, g, state, group)
    stepped = w.new_empty(world * k)
    dist.all_gather_into_tensor(stepped, w, group=pg)
    start = row_start(m, world, rank) * row
    weight.copy_(stepped[start:start + weight.numel()].view_as(weight))


def sharded_update(opt, p, group: dict) -> None:
    """One GaLoreAdamW step of the DTensor parameter `p` on this rank's shard (module docstring)."""
    state = opt.state[p]
    state.setdefault("step", 0)
    weight, grad = local(p), local(p.grad)  # in-place updates of `weight` update the DTensor's shard
    if "rank" not in group:
        eight_bit = opt.optim_bits == 8 and p.numel() >= opt.min_8bit_size  # as one process decides
        if dense_layout(p.shape, p.device_mesh.size(), eight_bit) == "flat":
            return _dense_flat(opt, p, state, group)
        if "exp_avg" not in state:
            opt._init_moments(state, grad, numel=p.numel())
        opt._dense_adam(weight, grad, state, group)
        return

    pg, world, rank = _mesh(p)
    m = p.shape[0]
    start, rows = row_start(m, world, rank), weight.shape[0]
    grad = _aligned(grad)
    side = projection_side(p.shape, group["proj_type"])
    if opt._refresh_due(state, group):
        opt._set_projection(state, p, _gather_rows(grad, m, pg, world), group, side)
    P, Q = state.get("proj_left"), state.get("proj_right")
    P_i = None if P is None else _aligned(P[start:start + rows])
    low_shape = low_rank_shape(p.shape, int(group["rank"]), side)
    numel = low_shape[0] * low_shape[1]
    eight_bit = opt.optim_bits == 8 and numel >= opt.min_8bit_size

    if layout(p.shape, int(group["rank"]), side, world, eight_bit) == "local":
        low = grad @ Q.t()
        if "exp_avg" not in state:
            opt._init_moments(state, low, numel=numel)
        direction, coef, decay = opt._low_rank_direction(state, low, group)
        _addmm_into(weight, direction.to(weight.dtype), Q, beta=decay, alpha=coef)
        return

    exact = bool(group["exact_projection"])
    k = flat_chunk(numel, world, eight_bit)
    if exact and side == "both":  # R = P^T (G Q^T) from every shard's rows of G Q^T: one process's R, to the bit
        R = P.t() @ _gather_rows(grad @ Q.t(), m, pg, world)
        flat = R.new_zeros(world * k)
        flat[:numel] = R.reshape(-1)
        mine = flat[rank * k:(rank + 1) * k].clone()
    else:
        if exact and side == "left":
            partial = left_sum_float64(grad, P_i)  # reduce-scattered in float64, rounded once below
        elif side == "left":
            partial = P_i.t() @ grad
        elif side == "both":
            partial = (P_i.t() @ grad) @ Q.t()
        else:
            partial = grad.new_zeros(low_shape)
            partial[start:start + rows] = grad @ Q.t()
        flat = partial.new_zeros(world * k)
        flat[:numel] = partial.reshape(-1)
        mine = partial.new_empty(k)
        dist.reduce_scatter_tensor(mine, flat, op=dist.ReduceOp.SUM, group=pg)
        mine = mine.to(grad.dtype)
    if "exp_avg" not in state:
        opt._init_moments(state, mine, numel=numel)
    direction, coef, decay = opt._low_rank_direction(state, mine, group)
    gathered = direction.new_empty(world * k)
    dist.all_gather_into_tensor(gathered, direction.contiguous(), group=pg)
    D = gathered[:numel].view(low_shape).to(weight.dtype)
    if side == "left":
        _addmm_into(weight, P_i, D, beta=decay, alpha=coef)
    elif side == "both":
        _addmm_into(weight, P_i @ D, Q, beta=decay, alpha=coef)
    else:
        _addmm_into(weight, _aligned(D[start:start + rows]), Q, beta=decay, alpha=coef)
