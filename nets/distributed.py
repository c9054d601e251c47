"""Data-parallel training over several processes, started by torchrun:

    torchrun --nproc_per_node=N tools/run_net.py --solver S.prototxt              # one machine, N processes
    torchrun --nnodes=M --node_rank=K --master_addr=HOST --nproc_per_node=N tools/run_net.py --solver S.prototxt

Each process (rank) trains a replica of the train net wrapped in DistributedDataParallel: gloo on the CPU,
NCCL on CUDA (rank r uses cuda:LOCAL_RANK). Gradients are averaged over the ranks, as Caffe's multi-GPU
training does, so with the net's batch B the global batch is N x B and the learning rate is the solver's as
written: N ranks train like one process with batch N x B and the same solver file (scale base_lr yourself if
you keep the per-process batch and want per-sample progress to match, e.g. the linear scaling rule).
Every rank runs the index layers for the whole global batch (their states stay identical) and reads only its
own share (nets/source.py, SourceStage.shard). Rank 0 alone logs, tests and writes snapshots; a snapshot holds
no rank count, so training resumes under any N (rank r > 0 reuses its saved RNG state when N is unchanged).
Snapshot folders and the data must be visible to every machine (a shared file system).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from netdef.errors import NetError

__all__ = ["launched_world_size", "init_from_env", "active", "rank", "world_size", "all_reduce_mean",
           "all_gather_object", "broadcast_object", "shutdown"]

# Rank 0 tests alone while the others wait in their next collective; NCCL's default of 10 minutes would
# turn a long test pass into a crash.
TIMEOUT = datetime.timedelta(hours=2)


def launched_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device: str | None) -> str | None:
    """Join the process group torchrun describes in the environment; returns the device this rank uses
    (the device asked for, with cuda made cuda:LOCAL_RANK). Without torchrun (or with one process) nothing
    happens and `device` comes back unchanged."""
    if launched_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    if not dist.is_available():
        raise NetError("torch was built without torch.distributed; cannot train with several processes")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if use_cuda:
        if device is None or torch.device(device).index is None:
            if local_rank >= torch.cuda.device_count():
                raise NetError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); start "
                               f"at most {torch.cuda.device_count()} processes per machine")
            device = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(device))
    try:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=TIMEOUT)
    except (RuntimeError, ValueError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise NetError(f"cannot join the process group (torchrun's MASTER_ADDR/MASTER_PORT): {detail}") from None
    return device or "cpu"


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean over the ranks (the tensor itself outside a process group)."""
    if not active():
        return values
    out = values.clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def all_gather_object(obj) -> list:
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(completed: bool = False) -> None:
    """Leave the process group. After a run every rank completed, wait for the others first: a rank that tears
    gloo down while a peer still talks to it can abort at exit ('terminate called without an active exception',
    seen once in CI under load). After an error or an interruption nobody waits (a peer may be gone)."""
    if dist.is_available() and dist.is_initialized():
        if completed and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
