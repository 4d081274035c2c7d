"""BlockPlan: which key blocks each query block computes. The one interface between strategies and kernels.

A plan is CSR-like, the same data as FlexAttention's BlockMask (`kv_num_blocks`, `kv_indices`) or
FastVideo's `q2k_num/q2k_idx`: for every (batch, head, query block) a count and a list of key blocks.

    kv_counts  int32 [B, H, Mq]        number of key blocks computed for the query block
    kv_indices int32 [B, H, Mq, Kmax]  their indices; only the first kv_counts entries are read

B may be 1 for a plan shared by the whole batch (e.g. the two halves of classifier-free guidance); it is
broadcast with `expand`, never copied.

Blocks are counted in the *working order*. Without a layout that is the model's own order, cut into blocks
of `block_q` / `block_k` tokens (the last one possibly ragged). With a layout (see `vidsparse.layout`) the
working order is the tile order with padding slots, and the plan carries the layout's permutation so that
`block_sparse_attention` and `to_dense_mask()` both speak the model's order.

A head listed in `skip_heads` computes nothing and outputs zeros (Sparse-vDiT's skipped heads). Anywhere
else a query block with no key block is an error, never a silent NaN.

Validation reads the plan back to the host (a device sync), so it runs where plans enter from outside: every
plan is validated on construction unless its builder passes `check=False`. Only vidsparse's own planners do, on
the per-call path (dynamic strategies, the controller's per-layer assembly), where the plan is valid by
construction and a sync per call would stall the GPU.
"""

from __future__ import annotations

import math
from dataclasses import InitVar, dataclass

import torch

from .device_cache import on_device
from .layout import VideoLayout


class PlanError(ValueError):
    """A BlockPlan whose tensors do not describe a valid block-sparse pattern."""


@dataclass(frozen=True, eq=False)
class BlockPlan:
    kv_counts: torch.Tensor
    kv_indices: torch.Tensor
    block_q: int
    block_k: int
    q_len: int
    kv_len: int
    layout: VideoLayout | None = None
    skip_heads: torch.Tensor | None = None
    check: InitVar[bool] = True

    def __post_init__(self, check: bool) -> None:
        if check:
            self.validate()

    # ----- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_mask(
        cls,
        mask: torch.Tensor,
        *,
        block_q: int | None = None,
        block_k: int | None = None,
        q_len: int | None = None,
        kv_len: int | None = None,
        layout: VideoLayout | None = None,
        skip_heads: torch.Tensor | None = None,
        max_kv_blocks: int | None = None,
        check: bool = True,
    ) -> BlockPlan:
        """Plan from a block-level boolean mask [B, H, Mq, Mk] (True = compute this block pair).

        With a layout, block sizes and lengths come from it; otherwise all four must be given.
        `max_kv_blocks` fixes the width Kmax of `kv_indices` (default: the largest count, which reads the mask's
        counts back to the host; pass Mk on the per-call path). `check=False` skips validation (see the module
        docstring): the counts and indices are valid by construction, only rows left empty are not caught.
        """
        if mask.dtype != torch.bool or mask.dim() != 4:
            raise PlanError(f"from_mask: mask must be a bool tensor [B, H, Mq, Mk], got {mask.dtype} {tuple(mask.shape)}")
        if layout is not None:
            block_q = block_k = layout.block_size
            q_len = kv_len = layout.seq_len
        if None in (block_q, block_k, q_len, kv_len):
            raise PlanError("from_mask: give block_q, block_k, q_len and kv_len, or a layout")
        counts = mask.sum(-1, dtype=torch.int32)
        if max_kv_blocks is None:
            kmax = max(int(counts.max()) if counts.numel() else 0, 1)
        else:
            kmax = min(max_kv_blocks, mask.shape[-1])
        # A stable descending sort of the mask lists each row's True columns first, in ascending order.
        order = torch.sort(mask.to(torch.int8), dim=-1, descending=True, stable=True).indices
        indices = order[..., :kmax].to(torch.int32).contiguous()
        return cls(counts, indices, block_q, block_k, q_len, kv_len, layout=layout, skip_heads=skip_heads, check=check)

    # ----- shape -----------------------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        """Leading dimension of the plan tensors: 1 means shared by every batch element."""
        return self.kv_counts.shape[0]

    @property
    def num_heads(self) -> int:
        return self.kv_counts.shape[1]

    @property
    def num_q_blocks(self) -> int:
        return self.kv_counts.shape[2]

    @property
    def num_kv_blocks(self) -> int:
        return self.layout.num_blocks if self.layout is not None else math.ceil(self.kv_len / self.block_k)

    @property
    def max_kv_blocks(self) -> int:
        return self.kv_indices.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.kv_counts.device

    # ----- validation ------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise PlanError naming the first thing wrong; called on construction."""
        counts, indices = self.kv_counts, self.kv_indices
        for name, t, dim in (("kv_counts", counts, 3), ("kv_indices", indices, 4)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != dim:
                got = f"{t.dtype} with {t.dim()} dims" if isinstance(t, torch.Tensor) else type(t).__name__
                raise PlanError(f"{name} must be an int32 tensor with {dim} dims, got {got}")
        if indices.shape[:3] != counts.shape:
            raise PlanError(f"kv_indices {tuple(indices.shape)} does not match kv_counts {tuple(counts.shape)}")
        for name in ("block_q", "block_k", "q_len", "kv_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise PlanError(f"{name} must be a positive integer, got {value!r}")
        if self.layout is not None:
            lay = self.layout
            if (self.block_q, self.block_k, self.q_len, self.kv_len) != (
                lay.block_size, lay.block_size, lay.seq_len, lay.seq_len
            ):
                raise PlanError(f"block sizes and lengths must be the layout's ({lay.block_size}, {lay.seq_len})")
        expected_mq = self.layout.num_blocks if self.layout is not None else math.ceil(self.q_len / self.block_q)
        if counts.shape[2] != expected_mq:
            raise PlanError(f"kv_counts has {counts.shape[2]} query blocks, the lengths need {expected_mq}")
        mk = self.num_kv_blocks
        if counts.numel() and (int(counts.min()) < 0 or int(counts.max()) > min(mk, indices.shape[-1])):
            raise PlanError(f"kv_counts must lie in [0, {min(mk, indices.shape[-1])}]")
        skipped = self._skip_mask(counts.device)
        empty = counts == 0
        if bool((empty & ~skipped[None, :, None]).any()):
            b, h, m = (int(i) for i in torch.nonzero(empty & ~skipped[None, :, None])[0])
            raise PlanError(f"query block {m} of head {h} (batch {b}) has no key block; list the head in skip_heads to drop it")
        if bool((~empty & skipped[None, :, None]).any()):
            raise PlanError("a head in skip_heads must have kv_counts 0 everywhere")
        used = torch.arange(indices.shape[-1], device=indices.device) < counts.unsqueeze(-1)
        idx = indices.long()
        if bool((used & ((idx < 0) | (idx >= mk))).any()):
            raise PlanError(f"kv_indices out of range [0, {mk})")
        # Scatter into one dummy column for unused slots; a duplicate index leaves fewer marks than the count.
        marks = torch.zeros(*counts.shape, mk + 1, dtype=torch.int32, device=counts.device)
        marks.scatter_(-1, torch.where(used, idx, mk), 1)
        if bool((marks[..., :mk].sum(-1) != counts).any()):
            raise PlanError("kv_indices repeats a key block within one query block")

    def _skip_mask(self, device: torch.device) -> torch.Tensor:
        if self.skip_heads is None:
            return torch.zeros(self.num_heads, dtype=torch.bool, device=device)
        if self.skip_heads.dtype != torch.bool or tuple(self.skip_heads.shape) != (self.num_heads,):
            raise PlanError(f"skip_heads must be a bool tensor [{self.num_heads}]")
        return self.skip_heads.to(device)

    # ----- token <-> block bookkeeping ---------------------------------------------------------------
    def _cached(self, key: str, device: torch.device, make) -> torch.Tensor:
        """Token/block bookkeeping depends on the geometry only: uploaded once per geometry and device, so the
        plans the controller builds on every call reuse it (see `vidsparse.device_cache`)."""
        geometry = self.layout if self.layout is not None else (self.q_len, self.kv_len, self.block_q, self.block_k)
        return on_device(geometry, key, device, make)

    def q_block_lengths(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """int32 [Mq]: real query tokens in each query block."""
        return self._cached("q_len", torch.device(device), lambda: self._block_lengths(self.q_len, self.block_q))

    def kv_block_lengths(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """int32 [Mk]: real key tokens in each key block (they come first in the block)."""
        return self._cached("kv_len", torch.device(device), lambda: self._block_lengths(self.kv_len, self.block_k))

    def _block_lengths(self, length: int, block: int) -> torch.Tensor:
        if self.layout is not None:
            return self.layout.block_lengths
        n = math.ceil(length / block)
        return torch.clamp(length - torch.arange(n) * block, max=block).to(torch.int32)

    def q_block_of_token(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """int64 [q_len]: query block of every query token, in the model's order."""
        return self._cached("q_tok", torch.device(device), lambda: self._block_of_token(self.q_len, self.block_q))

    def kv_block_of_token(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """int64 [kv_len]: key block of every key token, in the model's order."""
        return self._cached("kv_tok", torch.device(device), lambda: self._block_of_token(self.kv_len, self.block_k))

    def _block_of_token(self, length: int, block: int) -> torch.Tensor:
        if self.layout is not None:
            return self.layout.inverse_permutation // self.layout.block_size
        return torch.arange(length) // block

    def permutation(self, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """int64 [padded_len]: model-order token at each working position (padding slots clamped to 0)."""
        if self.layout is None:
            return None
        return self._cached("perm", torch.device(device), lambda: self.layout.permutation.clamp(min=0))

    def inverse_permutation(self, device: torch.device | str = "cpu") -> torch.Tensor | None:
        if self.layout is None:
            return None
        return self._cached("inv", torch.device(device), lambda: self.layout.inverse_permutation)

    # ----- views ---------------------------------------------------------------------------------------
    def to_block_mask(self) -> torch.Tensor:
        """bool [B, H, Mq, Mk]: True where the block pair is computed."""
        mk = self.num_kv_blocks
        used = torch.arange(self.max_kv_blocks, device=self.device) < self.kv_counts.unsqueeze(-1)
        marks = torch.zeros(*self.kv_counts.shape, mk + 1, dtype=torch.bool, device=self.device)
        marks.scatter_(-1, torch.where(used, self.kv_indices.long(), mk), True)
        return marks[..., :mk]

    def to_dense_mask(self, rows: torch.Tensor | slice | None = None) -> torch.Tensor:
        """bool [B, H, Sq, Sk] in the model's token order (optionally only the query rows `rows`)."""
        qb = self.q_block_of_token(self.device)
        if rows is not None:
            qb = qb[rows]
        kb = self.kv_block_of_token(self.device)
        return self.to_block_mask()[:, :, qb][:, :, :, kb]

    def density(self, per_head: bool = False) -> float | torch.Tensor:
        """Fraction of a dense call's work the kernel computes: computed slot pairs over real token pairs.

        The kernel computes every slot of a kept block pair, padding slots included, so this is
        kv_counts * block_q * block_k / (q_len * kv_len), the share of dense attention FLOPs the plan costs. A
        full plan on a layout with padding computes slightly more than 1 (`VideoLayout.padding_ratio`). This is
        the density reports and the cost model use; `useful_density` counts real token pairs only.
        Mean over batch entries and heads, or a float64 [B, H] tensor with per_head=True.
        """
        slots = self.kv_counts.sum(-1, dtype=torch.float64) * (self.block_q * self.block_k)
        per = slots / (self.q_len * self.kv_len)
        return per if per_head else float(per.mean())

    def useful_density(self, per_head: bool = False) -> float | torch.Tensor:
        """Fraction of (query, key) token pairs kept, over real tokens only (padding slots not counted).

        Mean over batch entries and heads, or a float64 [B, H] tensor with per_head=True.
        """
        q_lens = self.q_block_lengths(self.device).double()
        k_lens = self.kv_block_lengths(self.device).double()
        used = torch.arange(self.max_kv_blocks, device=self.device) < self.kv_counts.unsqueeze(-1)
        keys = (k_lens[self.kv_indices.long()] * used).sum(-1)  # [B, H, Mq] kept keys per query block
        per = (keys * q_lens).sum(-1) / (self.q_len * self.kv_len)
        return per if per_head else float(per.mean())

    def flops(self, head_dim: int) -> float:
        """Useful attention FLOPs (4 * kept real token pairs * head_dim), summed over the plan's batch and heads."""
        return 4.0 * head_dim * float(self.useful_density(per_head=True).sum()) * self.q_len * self.kv_len

    # ----- combination ---------------------------------------------------------------------------------
    def __or__(self, other: BlockPlan) -> BlockPlan:
        """Union: every block pair computed by either plan. Skipped only where both skip."""
        if not isinstance(other, BlockPlan):
            return NotImplemented
        same = (self.block_q, self.block_k, self.q_len, self.kv_len, self.layout, self.num_heads) == (
            other.block_q, other.block_k, other.q_len, other.kv_len, other.layout, other.num_heads
        )
        if not same:
            raise PlanError("can only union plans with the same blocks, lengths, layout and head count")
        if self.batch != other.batch and 1 not in (self.batch, other.batch):
            raise PlanError(f"cannot union plans with batch {self.batch} and {other.batch}")
        skip = None
        if self.skip_heads is not None and other.skip_heads is not None:
            skip = self.skip_heads & other.skip_heads.to(self.skip_heads.device)
        return BlockPlan.from_mask(
            self.to_block_mask() | other.to_block_mask().to(self.device),
            block_q=self.block_q, block_k=self.block_k, q_len=self.q_len, kv_len=self.kv_len,
            layout=self.layout, skip_heads=skip, check=False,  # every row keeps what either valid plan keeps
        )

    @staticmethod
    def concat_heads(plans: list[BlockPlan]) -> BlockPlan:
        """One plan whose heads are the heads of `plans`, in order (e.g. per-head strategies of one layer).

        All plans must share blocks, lengths and layout; batch-1 plans are broadcast to the largest batch.
        """
        if not plans:
            raise PlanError("concat_heads needs at least one plan")
        first = plans[0]
        key = (first.block_q, first.block_k, first.q_len, first.kv_len, first.layout)
        for p in plans[1:]:
            if (p.block_q, p.block_k, p.q_len, p.kv_len, p.layout) != key:
                raise PlanError("concat_heads: plans must share block sizes, lengths and layout")
        batch = max(p.batch for p in plans)
        if any(p.batch not in (1, batch) for p in plans):
            raise PlanError(f"concat_heads: batches {[p.batch for p in plans]} are not 1 or one common size")
        kmax = max(p.max_kv_blocks for p in plans)
        device = first.device
        counts = torch.cat([p.kv_counts.to(device).expand(batch, -1, -1) for p in plans], dim=1)
        indices = torch.cat(
            [
                torch.nn.functional.pad(p.kv_indices.to(device), (0, kmax - p.max_kv_blocks)).expand(batch, -1, -1, -1)
                for p in plans
            ],
            dim=1,
        )
        skip = None
        if any(p.skip_heads is not None for p in plans):
            skip = torch.cat([p._skip_mask(device) for p in plans])
        return BlockPlan(counts.contiguous(), indices.contiguous(), *key, skip_heads=skip, check=False)  # valid heads

    def select_heads(self, heads: torch.Tensor | list[int]) -> BlockPlan:
        """The plan restricted to some heads, in the given order (for head-parallel ranks or head groups)."""
        idx = torch.as_tensor(heads, dtype=torch.long, device=self.device)
        skip = None if self.skip_heads is None else self.skip_heads.to(self.device)[idx]
        return BlockPlan(
            self.kv_counts[:, idx].contiguous(), self.kv_indices[:, idx].contiguous(), self.block_q, self.block_k,
            self.q_len, self.kv_len, layout=self.layout, skip_heads=skip, check=False,  # heads of a valid plan
        )

    def to(self, device: torch.device | str) -> BlockPlan:
        if torch.device(device) == self.device:
            return self
        skip = None if self.skip_heads is None else self.skip_heads.to(device)
        return BlockPlan(
            self.kv_counts.to(device), self.kv_indices.to(device), self.block_q, self.block_k, self.q_len,
            self.kv_len, layout=self.layout, skip_heads=skip, check=False,  # a copy of a valid plan
        )

    def __repr__(self) -> str:
        where = repr(self.layout) if self.layout is not None else f"q_len={self.q_len}, kv_len={self.kv_len}"
        return (
            f"BlockPlan(batch={self.batch}, heads={self.num_heads}, blocks={self.num_q_blocks}x{self.num_kv_blocks} "
            f"of {self.block_q}x{self.block_k}, density={self.density():.3f}, {where})"
        )
