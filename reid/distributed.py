"""torchrun helpers: process-group set-up, rank checks, and gathering sharded features."""
import os

import torch
import torch.distributed as dist


def init_from_environment(device_name=None):
    """Join the process group when started by torchrun; return (rank, world_size, device).

    NCCL on GPUs, gloo on CPU. Each process uses the GPU of its LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name is None:
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if world_size > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def is_main_process():
    return not is_distributed() or dist.get_rank() == 0


def barrier():
    if is_distributed():
        dist.barrier()


def cleanup():
    if is_distributed():
        dist.destroy_process_group()


def gather_rows(tensor, total_rows):
    """All-gather a (n_rank, ...) tensor whose rows are this rank's share ``rank::world_size`` of a
    (total_rows, ...) tensor, and return the full tensor in the original row order on every rank."""
    if not is_distributed():
        return tensor
    world_size = dist.get_world_size()
    per_rank = -(-total_rows // world_size)
    padded = tensor.new_zeros((per_rank, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    interleaved = torch.stack(gathered, dim=1).reshape(per_rank * world_size, *tensor.shape[1:])
    return interleaved[:total_rows]
