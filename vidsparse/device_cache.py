"""Host-built plan metadata, uploaded to each device once.

A copy from host memory to a GPU waits for the work queued before it, so the per-call path must never upload
anything: strategies and backends ask `on_device` for the index tables they derive from a layout (tile of each
token, block lengths, chunk maps, ...) and get the copy made the first time that (owner, name, device) was seen.
Owners are frozen, hashable objects (layouts, strategies); the cache keeps the most recent entries.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable

import torch

_MAX_ENTRIES = 4096
_CACHE: OrderedDict[tuple[Hashable, str, torch.device], torch.Tensor] = OrderedDict()


def on_device(owner: Hashable, name: str, device: torch.device | str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`make()` (a host tensor derived from `owner` alone) on `device`, built and uploaded once per device."""
    key = (owner, name, torch.device(device))
    tensor = _CACHE.get(key)
    if tensor is None:
        tensor = _CACHE[key] = make().to(key[2])
        if len(_CACHE) > _MAX_ENTRIES:
            _CACHE.popitem(last=False)
    return tensor
