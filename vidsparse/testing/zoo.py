"""The head zoo: q, k, v with the attention structure typical of video DiT heads, planted on purpose.

Each head is built the way the real models build theirs: per-token *content* vectors (before rotary
embedding), then a 3D rotary position embedding (RoPE) like Wan 2.1 / HunyuanVideo's, which splits the head
dimension into three frequency bands for the latent frame, row and column:

    band sizes (Wan 2.1):  h = w = 2 * (head_dim // 6),  t = head_dim - h - w
    pair m of a band of size d rotates by  omega_m * position,  omega_m = THETA ** (-2m / d)

so the score of query i and key j is  sum_m <q_i,m, k_j,m> cos(omega_m (p_i - p_j)) + (sine terms), where
(q_i,m, k_j,m) are the content vectors' components on pair m and p is the pair's axis position. Structure
comes from which pairs carry what content:

- *Position pairs*: q and k carry the same constant component on a few pairs of one band, whose
  frequencies are below pi / (axis length) so that cos never wraps around on the grid. The score is then
  const - lambda * sum_m (1 - cos(omega_m * delta)), a window around delta = 0 (about a Gaussian with the
  chosen standard deviation) along that axis.
- *Content pairs*: the pairs whose rotation drifts least over the whole grid (lowest omega * axis length)
  are nearly position-invariant, so a shared direction on them gives a position-independent affinity.
- Every other pair carries independent Gaussian noise in q and k (a random logit of std NOISE_LOGIT_STD).

The five kinds (`HEAD_KINDS`):

    spatial   position pairs on all three axes: a window of std SPATIAL_SIGMA = (0.6 frames, 1.5 rows, 1.5 cols),
              i.e. nearly all mass in the own and adjacent frames, within a few tokens.
    temporal  position pairs on rows and columns only (std 0.35 tokens): the same (h, w) position in every frame.
    sink      NUM_SINKS fixed keys in the first latent frame (a 2 x 2 lattice of positions) share a content
              direction with every query, strong enough to hold SINK_MASS of each row's mass.
    block     video tiles (the layout's blocks) are dealt at random into a few clusters; each cluster has its own
              orthogonal content direction, shared by its queries and keys, strong enough that a query keeps
              BLOCK_MASS of its mass inside its cluster's tiles: content-dependent and not local.
    diffuse   noise only, with logit std DIFFUSE_LOGIT_STD: near-uniform attention.

Text tokens (if the layout has them) are not rotated (HunyuanVideo and CogVideoX leave text unrotated) and
carry noise only, except that sink queries also look at the sinks. Values are standard Gaussian. Everything is
drawn from `generator` and built in float64, then cast.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..layout import VideoLayout

HEAD_KINDS = ("spatial", "temporal", "sink", "block", "diffuse")

ROPE_THETA = 10000.0
SPATIAL_SIGMA = (0.6, 1.5, 1.5)  # std of the spatial head's window in (frames, rows, cols)
TEMPORAL_SIGMA = 0.35  # std of the temporal head's window in rows and cols
NUM_SINKS = 4
SINK_MASS = 0.95  # target share of every row's mass on the sinks (before noise)
BLOCK_MASS = 0.95  # target share of every video row's mass inside its own cluster (before noise)
MAX_BLOCK_CLUSTERS = 8
NOISE_LOGIT_STD = 0.5
DIFFUSE_LOGIT_STD = 0.2
MIN_HEAD_DIM = 32


def rope_band_sizes(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) channels of each RoPE band, split like Wan 2.1's 3D RoPE."""
    hw = 2 * (head_dim // 6)
    return (head_dim - 2 * hw, hw, hw)


def rope_pairs(head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel pair (2m, 2m+1): its frequency (float64 [D/2]) and its axis (int64 [D/2]: 0=t, 1=h, 2=w)."""
    freqs, axes = [], []
    for axis, size in enumerate(rope_band_sizes(head_dim)):
        freqs.append(ROPE_THETA ** (-torch.arange(0, size, 2, dtype=torch.float64) / size))
        axes.append(torch.full((size // 2,), axis, dtype=torch.int64))
    return torch.cat(freqs), torch.cat(axes)


def apply_rope_3d(x: torch.Tensor, layout: VideoLayout) -> torch.Tensor:
    """Rotate x [..., S, D] (model order) by each video token's (f, h, w); text tokens are left unrotated."""
    freqs, axes = rope_pairs(x.shape[-1])
    coords = layout.token_coords.to(x.device).clamp(min=0)  # text: position 0, i.e. no rotation
    angles = coords[:, axes].to(torch.float64) * freqs.to(x.device)  # [S, D/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def make_heads(
    layout: VideoLayout,
    kinds: Sequence[str],
    *,
    batch: int = 1,
    head_dim: int = 64,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [batch, len(kinds), S, head_dim] in the model's order, one head per entry of `kinds`."""
    kinds = list(kinds)
    unknown = [kind for kind in kinds if kind not in _BUILDERS]
    if not kinds or unknown:
        raise ValueError(f"make_heads: kinds must be a non-empty list of {HEAD_KINDS}, got {kinds!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"make_heads: batch must be an integer >= 1, got {batch!r}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < MIN_HEAD_DIM or head_dim % 2:
        raise ValueError(f"make_heads: head_dim must be an even integer >= {MIN_HEAD_DIM}, got {head_dim!r}")
    qs, ks = [], []
    for kind in kinds:
        q, k = _BUILDERS[kind](_HeadContext(layout, batch, head_dim, generator))
        qs.append(q)
        ks.append(k)
    q = apply_rope_3d(torch.stack(qs, dim=1), layout)
    k = apply_rope_3d(torch.stack(ks, dim=1), layout)
    v = torch.randn(batch, len(kinds), layout.seq_len, head_dim, dtype=torch.float64, generator=generator)
    return q.to(dtype), k.to(dtype), v.to(dtype)


class _HeadContext:
    """What every builder needs: sizes, the RoPE pair tables, the generator, and the softmax scale."""

    def __init__(self, layout: VideoLayout, batch: int, head_dim: int, generator: torch.Generator | None):
        self.layout, self.batch, self.head_dim, self.generator = layout, batch, head_dim, generator
        self.scale = 1.0 / math.sqrt(head_dim)
        self.freqs, self.axes = rope_pairs(head_dim)
        lengths = torch.tensor(layout.grid, dtype=torch.float64)
        drift = self.freqs * (lengths[self.axes] - 1)  # largest rotation of each pair across the grid
        self.content_pairs = torch.argsort(drift)[: head_dim // 8]

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.batch, self.layout.seq_len, self.head_dim, dtype=torch.float64)

    def add_noise(self, q: torch.Tensor, k: torch.Tensor, used_pairs: torch.Tensor, logit_std: float) -> None:
        """Independent Gaussian noise in q and k on the pairs not in `used_pairs`: a random logit of std logit_std."""
        free = torch.ones(self.head_dim // 2, dtype=torch.bool)
        free[used_pairs] = False
        channels = torch.stack([2 * torch.nonzero(free).squeeze(1), 2 * torch.nonzero(free).squeeze(1) + 1], 1).reshape(-1)
        # scale * <n_q, n_k> over c channels of std s has std scale * s^2 * sqrt(c).
        std = math.sqrt(logit_std / (self.scale * math.sqrt(channels.numel())))
        for x in (q, k):
            x[..., channels] += std * torch.randn(*x.shape[:-1], channels.numel(), dtype=torch.float64, generator=self.generator)

    def content_directions(self, count: int) -> torch.Tensor:
        """float64 [count, D]: orthonormal directions on the content pairs."""
        channels = torch.stack([2 * self.content_pairs, 2 * self.content_pairs + 1], 1).reshape(-1)
        basis = torch.linalg.qr(torch.randn(channels.numel(), count, dtype=torch.float64, generator=self.generator)).Q
        directions = torch.zeros(count, self.head_dim, dtype=torch.float64)
        directions[:, channels] = basis.T
        return directions

    def video_rows(self) -> slice:
        return slice(self.layout.video_offset, self.layout.video_offset + self.layout.num_video_tokens)


def _window(ctx: _HeadContext, sigmas: Sequence[float | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k whose scores are a window of std sigmas[a] tokens along each axis a (None: no window on that axis)."""
    q, k = ctx.zeros(), ctx.zeros()
    used = []
    for axis, sigma in enumerate(sigmas):
        length = ctx.layout.grid[axis]
        if sigma is None or length == 1:
            continue
        # Frequencies below the cap never wrap around on the grid (cos stays monotone in |delta|); those far
        # below it add almost no curvature, so only the top of the range is used.
        cap = 0.9 * math.pi / (length - 1)
        in_band = torch.nonzero(ctx.axes == axis).squeeze(1)
        eligible = in_band[ctx.freqs[in_band] <= cap]
        pairs = eligible[ctx.freqs[eligible] > ctx.freqs[eligible].max() / 16]
        # score = (amp^2 * scale) * sum_m cos(omega_m delta) ~ const - lam/2 * sum_m omega_m^2 delta^2 near 0.
        lam = 1.0 / (sigma**2 * float(ctx.freqs[pairs].square().sum()))
        amplitude = math.sqrt(lam / ctx.scale)
        rows = ctx.video_rows()
        q[:, rows, 2 * pairs] = amplitude
        k[:, rows, 2 * pairs] = amplitude
        used.append(pairs)
    ctx.add_noise(q, k, torch.cat(used) if used else torch.empty(0, dtype=torch.long), NOISE_LOGIT_STD)
    return q, k


def _spatial(ctx: _HeadContext) -> tuple[torch.Tensor, torch.Tensor]:
    return _window(ctx, SPATIAL_SIGMA)


def _temporal(ctx: _HeadContext) -> tuple[torch.Tensor, torch.Tensor]:
    return _window(ctx, (None, TEMPORAL_SIGMA, TEMPORAL_SIGMA))


def sink_positions(layout: VideoLayout) -> torch.Tensor:
    """int64 [n]: model-order indices of the sink keys: a 2 x 2 lattice of positions in the first latent frame."""
    rows = sorted({layout.height // 4, (3 * layout.height) // 4})
    cols = sorted({layout.width // 4, (3 * layout.width) // 4})
    return torch.tensor([layout.video_offset + r * layout.width + c for r in rows for c in cols], dtype=torch.int64)


def _sink(ctx: _HeadContext) -> tuple[torch.Tensor, torch.Tensor]:
    q, k = ctx.zeros(), ctx.zeros()
    sinks = sink_positions(ctx.layout)
    n, s = sinks.numel(), ctx.layout.seq_len
    # n e^g / (n e^g + (s - n)) = SINK_MASS
    gap = math.log(SINK_MASS / (1 - SINK_MASS) * (s - n) / n)
    direction = ctx.content_directions(1)[0] * math.sqrt(gap / ctx.scale)
    q[:] = direction
    k[:, sinks] = direction
    ctx.add_noise(q, k, ctx.content_pairs, NOISE_LOGIT_STD)
    return q, k


def block_clusters(layout: VideoLayout) -> int:
    """Number of tile clusters of a block head: about three tiles each, between 2 and MAX_BLOCK_CLUSTERS."""
    return max(2, min(MAX_BLOCK_CLUSTERS, layout.num_video_blocks // 3))


def _block(ctx: _HeadContext) -> tuple[torch.Tensor, torch.Tensor]:
    layout = ctx.layout
    clusters = block_clusters(layout)
    q, k = ctx.zeros(), ctx.zeros()
    tile_of_token = layout.inverse_permutation[ctx.video_rows()] // layout.block_size
    for b in range(ctx.batch):
        cluster_of_tile = torch.randperm(layout.num_video_blocks, generator=ctx.generator) % clusters
        cluster = cluster_of_tile[tile_of_token]
        sizes = torch.bincount(cluster, minlength=clusters)
        smallest, s = int(sizes.min()), layout.seq_len
        gap = math.log(BLOCK_MASS / (1 - BLOCK_MASS) * (s - smallest) / smallest)
        directions = ctx.content_directions(clusters) * math.sqrt(gap / ctx.scale)
        q[b, ctx.video_rows()] = directions[cluster]
        k[b, ctx.video_rows()] = directions[cluster]
    ctx.add_noise(q, k, ctx.content_pairs, NOISE_LOGIT_STD)
    return q, k


def _diffuse(ctx: _HeadContext) -> tuple[torch.Tensor, torch.Tensor]:
    q, k = ctx.zeros(), ctx.zeros()
    ctx.add_noise(q, k, torch.empty(0, dtype=torch.long), DIFFUSE_LOGIT_STD)
    return q, k


_BUILDERS: dict[str, Callable[[_HeadContext], tuple[torch.Tensor, torch.Tensor]]] = {
    "spatial": _spatial,
    "temporal": _temporal,
    "sink": _sink,
    "block": _block,
    "diffuse": _diffuse,
}
