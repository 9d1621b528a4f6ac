"""What a trainer rank sets up around its DeepSpeed engine: the rendezvous
port, glibc's malloc behaviour, ZeRO-3's fp32 master copy, and the DeepSpeed
config itself. Split from worker.py, which runs the update."""

from __future__ import annotations

import ctypes
import os
import socket
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
FIXED_MMAP_THRESHOLD = 1 << 20
MMAP_THRESHOLD_ENV = (
    "MALLOC_MMAP_THRESHOLD_"  # glibc's variable; set in the driver's environment, it decides for every rank
)


def return_freed_blocks(threshold: int = FIXED_MMAP_THRESHOLD) -> bool:
    """Make glibc's malloc return every freed block of `threshold` bytes or more to
    the OS (and trim the heap beyond 128 KiB), as MALLOC_MMAP_THRESHOLD_ does when
    set at start-up. By default glibc raises its mmap threshold each time a large
    block is freed, after which ZeRO-3's per-layer gathers, activations and sync
    pieces come from the heap and stay resident once freed (a 0.17B ZeRO-3 rank
    peaked at 3.8 GiB instead of 2.5). The price is that every such block is mapped
    and zero-filled again at each use: ~30% of a 135M model's update on CPU. False
    where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 128 << 10) == 1
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return done


def allocator(saving: bool) -> int | None:
    """The fixed mmap threshold a rank's malloc runs with (None: glibc's default,
    which keeps freed blocks for reuse). MALLOC_MMAP_THRESHOLD_ in the driver's
    environment decides; otherwise settings that ask for memory over speed
    (`saving`: ZeRO-3, offload, gradient checkpointing) also get freed blocks
    returned to the OS (`return_freed_blocks`), and the others keep the faster default."""
    if MMAP_THRESHOLD_ENV in os.environ:
        value = os.environ[MMAP_THRESHOLD_ENV]
        if not value.isdigit():
            raise ValueError(
                f"{MMAP_THRESHOLD_ENV}={value!r} in the driver's environment: give bytes as an integer, e.g. 1048576"
            )
        return int(value)
    return FIXED_MMAP_THRESHOLD if saving and return_freed_blocks() else None


def build_cpu_adam_once() -> None:
    """DeepSpeedCPUAdam's op is compiled on first use: under a file lock, the first
    rank on a node builds it and the others load the cached build (not every rank
    compiling at once)."""
    import fcntl
    from pathlib import Path

    from deepspeed.ops.op_builder import CPUAdamBuilder

    lock = (
        Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
        / "gradus-cpu-adam.lock"
    )
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        CPUAdamBuilder().load()


def optimizer_threads(threads: int) -> int:
    """Threads for an offloaded optimizer step: the node's cores shared among its
    GPU ranks (the rank's own `threads` if that is more)."""
    import ray

    cores = len(
        os.sched_getaffinity(0)
    )  # the node's as this process may use them (cgroups, taskset); Ray narrows GPUs only
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    gpus = next((n["Resources"].get("GPU", 1) for n in ray.nodes() if n["NodeID"] == node), 1) if node else 1
    return max(threads, int(cores // max(1, gpus)))


def share_fp32_master(optimizer: Any) -> None:
    """ZeRO-3 keeps an fp32 master copy of each rank's partition, and means to reuse
    the partition itself when it is already fp32 on the optimizer's device; but
    DeepSpeed (0.19) compares the partition's torch.device with a device *name*,
    which is never equal, so an fp32 run holds both (4 more bytes per parameter and
    rank). Point the master at the partition before the first step, as DeepSpeed's
    own branch does: the same values, updated in place."""
    if optimizer.offload_optimizer or optimizer.swap_optimizer:
        return
    for i, (part, master) in enumerate(
        zip(optimizer.fp16_partitioned_groups_flat, optimizer.fp32_partitioned_groups_flat)
    ):
        if (
            part is None
            or part.dtype != master.dtype
            or part.device != master.device
            or part.data_ptr() == master.data_ptr()
        ):
            continue
        part.requires_grad = True
        part.ds_id, part.grad = master.ds_id, master.grad
        optimizer.fp32_partitioned_groups_flat[i] = part


def deepspeed_config(
    stage: int,
    hidden: int,
    piece_params: int,
    offload: dict[str, str],
    grad_clip: float,
    dtype: str = "float32",
    training: bool = True,
) -> dict[str, Any]:
    """A rank's DeepSpeed config: ZeRO `stage` with buckets sized from the model's
    `hidden` size, offload where asked, gradient clipping, and the model's dtype:
    bf16/fp16 parameters with fp32 master weights and optimizer state in
    DeepSpeed's mixed-precision optimizers (fp16 with dynamic loss scaling), which
    also makes ZeRO-3's zero.Init build in that dtype. training=False gives the
    optimizer-free reference engine's."""
    zero: dict[str, Any] = {"stage": stage}
    if zero["stage"] == 3:  # DeepSpeed's defaults (1e9 live / reuse distance) keep a < 1B model whole on every rank
        h2, live = hidden**2, piece_params  # buckets as HF's "auto" values
        zero.update(
            stage3_max_live_parameters=live,
            stage3_max_reuse_distance=live,
            stage3_prefetch_bucket_size=int(0.9 * h2),
            stage3_param_persistence_threshold=10 * hidden,
            reduce_bucket_size=h2,
        )
    if offload.get("params") == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if offload.get("optimizer") == "cpu" and training:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    config = {
        "train_micro_batch_size_per_gpu": 1,  # bookkeeping only: micro-batches are sized by tokens
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "steps_per_print": 10**9,
    }
    if training:
        config.update(
            {
                # we own the boundary: any number of micro-batches, then step()
                "managed_gradient_accumulation": False,
                "gradient_clipping": grad_clip,
                "zero_force_ds_cpu_optimizer": False,
                "zero_allow_untested_optimizer": True,  # plain SGD (trainer.optimizer=sgd) under ZeRO
            }
        )
    if dtype == "bfloat16":
        config["bf16"] = {"enabled": True}
    elif dtype == "float16":
        config["fp16"] = {
            "enabled": True,
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        }
    return config
