"""Weight-sync seconds per transport for the default model, next to a plain
memory copy of the same bytes (how close each gets to memory bandwidth).

    python benchmarks/weight_sync.py [--model smollm2-135m-instruct] [--bucket-mb 64 512] [--engine]

Transport only: a sender actor (trainer rank 0's side) and a receiver actor
(the rollout side, unpacking into named tensors, no engine). With --engine,
also the full sync into a running vLLM engine (reload included) through the
real trainer and rollout groups.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ray
import torch

from gradus.launch.prepare.model_dirs import resolve_model
from gradus.trainer.sync import WeightReceiver, WeightSender
from gradus.trainer.rank_setup import free_port


class Source(WeightSender):
    def __init__(self, model: str) -> None:
        from safetensors.torch import load_file

        self.rank = 0
        self.state = {}
        for f in sorted(resolve_model(model).glob("*.safetensors")):
            self.state.update(load_file(f))

    def _state_pieces(self):
        yield self.state

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


class Sink(WeightReceiver):
    def load_weights(self, named, version) -> None:
        self.received = sum(t.numel() for _, t in named)


def memcpy_seconds(nbytes: int, repeat: int) -> float:
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return min(times)


def transport_seconds(source, sink, transport: str, bucket_mb: float, repeat: int) -> float:
    layout = ray.get(source.weight_layout.remote(bucket_mb))
    ray.get(sink.set_weight_layout.remote(layout))
    if transport == "broadcast":
        port = free_port()
        ray.get(
            [
                source.join_weight_group.remote("127.0.0.1", port, 2, "gloo"),
                sink.join_weight_group.remote("127.0.0.1", port, 2, 1, "gloo"),
            ]
        )
    times = []
    for version in range(repeat):
        start = time.perf_counter()
        if transport == "broadcast":
            ray.get([sink.receive_weights.remote(version), source.broadcast_weights.remote()])
        else:
            ray.get(sink.fetch_weights.remote(source.publish_weights.remote(), version))
        times.append(time.perf_counter() - start)
    return min(times)


def engine_seconds(model: str, bucket_mb: float, repeat: int) -> dict[str, float]:
    from gradus.launch.config.load import load_config
    from gradus.launch.run.driver import Run

    cfg = load_config(
        "configs/default.yaml", [f"model.path={model}", "run.run_dir=/tmp/gradus-bench-sync", "wandb.mode=disabled"]
    )
    run = Run(cfg, overwrite=True)
    out = {}
    try:
        run.start()
        for transport in ("object_store", "broadcast"):
            run.rollout.connect(run.trainers, transport, bucket_mb)
            times = []
            for version in range(1, repeat + 1):
                start = time.perf_counter()
                run.rollout.update_weights(version)
                times.append(time.perf_counter() - start)
            out[transport] = statistics.median(times)
    finally:
        run.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--bucket-mb", type=float, nargs="+", default=[64.0, 512.0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--engine", action="store_true", help="also time full syncs into vLLM through the real actor groups"
    )
    args = parser.parse_args()

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    source = ray.remote(num_cpus=1)(Source).remote(args.model)
    sink = ray.remote(num_cpus=1)(Sink).remote()
    nbytes = ray.get(source.nbytes.remote())
    gb = nbytes / 1e9
    copy = memcpy_seconds(nbytes, args.repeat)
    print(f"model {args.model}: {gb:.3f} GB of weights")
    print(f"{'what':<34}{'seconds':>9}{'s/GB':>8}{'GB/s':>8}{'x memcpy':>10}")
    print(f"{'memcpy (one buffer)':<34}{copy:>9.3f}{copy / gb:>8.3f}{gb / copy:>8.2f}{1.0:>10.1f}")
    for bucket_mb in args.bucket_mb:
        for transport in ("object_store", "broadcast"):
            sec = transport_seconds(source, sink, transport, bucket_mb, args.repeat)
            print(
                f"{transport + f' ({bucket_mb:g} MB buckets)':<34}{sec:>9.3f}{sec / gb:>8.3f}"
                f"{gb / sec:>8.2f}{sec / copy:>10.1f}"
            )
    ray.kill(source)
    ray.kill(sink)
    ray.shutdown()
    if args.engine:
        for transport, sec in engine_seconds(args.model, args.bucket_mb[-1], args.repeat).items():
            print(
                f"{transport + ' + vLLM reload (engine)':<34}{sec:>9.3f}{sec / gb:>8.3f}"
                f"{gb / sec:>8.2f}{sec / copy:>10.1f}"
            )


if __name__ == "__main__":
    main()
