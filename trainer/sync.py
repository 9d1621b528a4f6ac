"""Trainer -> rollout weight transfer, in a few flat buckets instead of one
message per parameter, over one of two transports behind the same calls:

- "object_store": trainer rank 0 puts each bucket into Ray's object store and
  every rollout worker fetches them. Works wherever Ray does; the fallback.
- "broadcast": a torch.distributed group of trainer rank 0 and every rollout
  worker (NCCL on CUDA, gloo on CPU), one broadcast per bucket.

The sender computes the layout (which tensor sits where in which bucket) once
and receivers are handed it, so nothing but bucket bytes moves per sync. The
group is built from its own TCPStore, apart from the trainers' default group
(vLLM's StatelessProcessGroup idea), so trainer collectives are untouched.

`WeightSender` is mixed into the trainer ranks; `WeightReceiver` into the
rollout actor (launch/run/groups.py), which supplies `load_weights`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist

from gradus.trainer.config import choices

TRANSPORTS = choices(
    "sync transport",
    {
        "object_store": "buckets through Ray's object store (any cluster)",
        "broadcast": "a torch.distributed broadcast group (NCCL on GPUs)",
    },
)
GROUP_TIMEOUT = timedelta(minutes=5)


@dataclass
class Bucket:
    """Tensors of one dtype laid end to end: (name, shape, element offset)."""

    dtype: str
    entries: list[tuple[str, tuple[int, ...], int]] = field(default_factory=list)
    numel: int = 0

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty(0, dtype=getattr(torch, self.dtype)).element_size()


def bucket_layout(state: Mapping[str, torch.Tensor], bucket_bytes: int) -> list[Bucket]:
    """Buckets of at most `bucket_bytes` (a larger tensor gets a bucket of its own),
    in state order; a dtype change starts a new bucket."""
    buckets: list[Bucket] = []
    for name, t in state.items():
        dtype = str(t.dtype).removeprefix("torch.")
        size = t.numel() * t.element_size()
        current = buckets[-1] if buckets else None
        if current is None or current.dtype != dtype or (current.numel and current.nbytes + size > bucket_bytes):
            current = Bucket(dtype)
            buckets.append(current)
        current.entries.append((name, tuple(t.shape), current.numel))
        current.numel += t.numel()
    return buckets


def unpack(flat: torch.Tensor, bucket: Bucket) -> Iterator[tuple[str, torch.Tensor]]:
    """Named views into a received byte tensor (no copy)."""
    typed = flat.view(getattr(torch, bucket.dtype))
    for name, shape, offset in bucket.entries:
        yield name, typed[offset : offset + int(np.prod(shape, dtype=np.int64))].view(shape)


def new_group(host: str, port: int, world_size: int, rank: int, backend: str) -> Any:
    """A process group of its own; rank 0 hosts the rendezvous store."""
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=GROUP_TIMEOUT)
    prefixed = dist.PrefixStore("gradus-weights", store)
    if backend == "nccl":  # a deadline: a dead receiver ends rank 0 (NCCL tears its process down) after GROUP_TIMEOUT,
        # not NCCL's 10 minutes, and the run restarts from its checkpoint
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = GROUP_TIMEOUT
        return dist.ProcessGroupNCCL(prefixed, rank, world_size, options)
    return dist.ProcessGroupGloo(prefixed, rank, world_size, GROUP_TIMEOUT)


def broadcast(group: Any, tensor: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()
    if tensor.is_cuda:  # NCCL's wait() orders the stream, not the host: time the transfer itself
        torch.cuda.synchronize(tensor.device)


class WeightSender:
    """Trainer side. Every rank calls each method (under ZeRO-3 the pieces of the
    state are gathered collectively); rank 0 sends. Needs `rank` and
    `_state_pieces()`: the HF-named state in pieces, each valid until the next."""

    rank: int
    _weight_group: Any = None
    _layout: list[Bucket] | None = None

    def _state_pieces(self) -> Iterator[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def weight_layout(self, bucket_mb: float) -> list[Bucket]:
        specs = {
            name: torch.empty(t.shape, dtype=t.dtype, device="meta")
            for piece in self._state_pieces()
            for name, t in piece.items()
        }
        self._layout = bucket_layout(specs, int(bucket_mb * 2**20))
        return self._layout

    def join_weight_group(self, host: str, port: int, world_size: int, backend: str) -> None:
        self._weight_group = None  # leave a previous group (a rollout worker was replaced)
        self._weight_group = new_group(host, port, world_size, 0, backend)

    def _send_buckets(self, send: Callable[[torch.Tensor], Any]) -> list[Any]:
        """Copy each tensor into its bucket's flat buffer as the pieces arrive and send
        each bucket (rank 0, as flat bytes) once full. Buckets fill in layout order
        (the layout was made from the same walk), so at most a piece and the buckets
        it spans are held, never a copy of a tensor waiting for a later piece."""
        where = {name: (i, offset) for i, bucket in enumerate(self._layout) for name, _, offset in bucket.entries}
        left = [len(bucket.entries) for bucket in self._layout]
        filling: dict[int, torch.Tensor] = {}
        sent = []
        for piece in self._state_pieces():
            if self.rank != 0:
                continue
            for name, tensor in piece.items():
                i, offset = where[name]
                bucket = self._layout[i]
                if i not in filling:
                    filling[i] = torch.empty(bucket.numel, dtype=getattr(torch, bucket.dtype), device=tensor.device)
                filling[i][offset : offset + tensor.numel()].copy_(tensor.detach().reshape(-1))
                left[i] -= 1
                if not left[i]:
                    sent.append(send(filling.pop(i).view(torch.uint8)))
        return sent

    def publish_weights(self) -> list[Any] | None:
        """Object-store references to the buckets (rank 0; None elsewhere)."""
        import ray

        refs = self._send_buckets(lambda flat: ray.put(flat.cpu().numpy()))
        return refs if self.rank == 0 else None

    def broadcast_weights(self) -> float:
        """Send every bucket to the weight group; seconds spent (rank 0)."""
        start = time.perf_counter()
        self._send_buckets(lambda flat: broadcast(self._weight_group, flat))
        return time.perf_counter() - start


class WeightReceiver:
    """Rollout side; the host class provides `load_weights(named, version)`."""

    _weight_group: Any = None
    _layout: list[Bucket] | None = None

    def set_weight_layout(self, layout: list[Bucket]) -> None:
        self._layout = layout

    def join_weight_group(self, host: str, port: int, world_size: int, rank: int, backend: str) -> None:
        self._weight_group = None
        self._weight_group = new_group(host, port, world_size, rank, backend)

    def fetch_weights(self, refs: list[Any], version: int) -> float:
        """Object-store transport: get each bucket, then load; seconds taken."""
        import ray

        start = time.perf_counter()
        named = []
        with warnings.catch_warnings():  # object-store arrays are read-only; the engine copies out of them
            warnings.simplefilter("ignore", UserWarning)
            for bucket, ref in zip(self._layout, refs):
                named += unpack(torch.from_numpy(ray.get(ref)), bucket)
        self.load_weights(named, version)
        return time.perf_counter() - start

    def receive_weights(self, version: int, device: str = "cpu") -> float:
        """Broadcast transport: each bucket is received as the engine loads the
        one before it (a generator), so no second copy of the model is held on
        the GPU beside the engine's own; seconds taken."""

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for bucket in self._layout:
                flat = torch.empty(bucket.nbytes, dtype=torch.uint8, device=device)
                broadcast(self._weight_group, flat)
                yield from unpack(flat, bucket)

        start = time.perf_counter()
        self.load_weights(stream(), version)
        return time.perf_counter() - start
