"""Weight-sync buckets and the broadcast transport over a real gloo group
(processes, no Ray or vLLM: the full path runs in the e2e and two-node tests)."""

import inspect
import multiprocessing as mp

import torch

from gradus.trainer.rank_setup import free_port
from gradus.trainer.sync import WeightReceiver, WeightSender, bucket_layout, unpack


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(64, 16, generator=g),
        "layer.0.weight": torch.randn(16, 16, generator=g),
        "layer.0.bias": torch.randn(16, generator=g),
        "norm.weight": torch.randn(16, generator=g).to(torch.bfloat16),
        "head.weight": torch.randn(64, 16, generator=g),
    }


def test_layout_respects_bucket_size_and_dtype():
    state = _state()
    buckets = bucket_layout(state, bucket_bytes=5000)
    # embed (4096 B) alone, layer weight+bias (1088 B) would overflow it; bf16 starts its own; head alone.
    assert [[n for n, _, _ in b.entries] for b in buckets] == [
        ["embed.weight"],
        ["layer.0.weight", "layer.0.bias"],
        ["norm.weight"],
        ["head.weight"],
    ]
    assert [b.dtype for b in buckets] == ["float32", "float32", "bfloat16", "float32"]
    assert buckets[1].nbytes == (256 + 16) * 4 and buckets[2].nbytes == 32
    assert len(bucket_layout(state, bucket_bytes=2**30)) == 3  # only dtype changes split


class _Sender(WeightSender):
    """Yields the state one tensor per piece, as fresh copies that are poisoned once
    the next piece is asked for (like ZeRO-3's gathered parameters, freed)."""

    def __init__(self, state):
        self.rank, self.state = 0, state

    def _state_pieces(self):
        for name, t in self.state.items():
            piece = {name: t.clone()}
            yield piece
            piece[name].fill_(float("nan"))


def test_buckets_filled_from_pieces_unpack_exactly():
    """Each bucket is filled as the pieces arrive (each freed when the next is asked
    for) and unpacks to the exact tensors, dtypes included."""
    state = _state()
    sender = _Sender(state)
    layout = sender.weight_layout(bucket_mb=3000 / 2**20)
    flats = sender._send_buckets(lambda flat: flat.clone())
    assert len(flats) == len(layout) == 4
    for flat, bucket in zip(flats, layout):
        assert flat.dtype == torch.uint8 and flat.numel() == bucket.nbytes
        for name, tensor in unpack(flat, bucket):
            assert tensor.dtype == state[name].dtype and torch.equal(tensor, state[name])


class _Receiver(WeightReceiver):
    def load_weights(self, named, version):
        assert inspect.isgenerator(named)  # buckets arrive as the engine loads: no second copy of the model
        self.loaded = {name: t.clone() for name, t in named}, version


def _receive(port: int, rank: int, layout, queue) -> None:
    receiver = _Receiver()
    receiver.set_weight_layout(layout)
    receiver.join_weight_group("127.0.0.1", port, 3, rank, "gloo")
    for version in (1, 2):
        receiver.receive_weights(version)
        queue.put((rank, receiver.loaded[1], {n: t.sum().item() for n, t in receiver.loaded[0].items()}))


def test_broadcast_transport_delivers_every_bucket_to_every_receiver():
    state = _state()
    sender = _Sender(state)
    layout = sender.weight_layout(bucket_mb=0.004)
    assert len(layout) == 4
    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_receive, args=(port, r, layout, queue)) for r in (1, 2)]
    for p in procs:
        p.start()
    sender.join_weight_group("127.0.0.1", port, 3, "gloo")
    sender.broadcast_weights()
    for t in state.values():
        t.mul_(2)  # the second sync carries new values
    sender.broadcast_weights()
    got = [queue.get(timeout=60) for _ in range(4)]
    for p in procs:
        p.join(timeout=60)
    assert sorted((rank, version) for rank, version, _ in got) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for _, version, sums in got:
        for name, t in state.items():
            expected = t.sum().item() / (2 if version == 1 else 1)
            assert abs(sums[name] - expected) <= 1e-3 * max(1.0, abs(expected)), (name, version)
