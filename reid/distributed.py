"""torchrun helpers: process-group set-up, rank checks, and gathering sharded features.

When one process stops with an error, the others must not wait for it at a collective: the process group
is left only at exit (after ``main`` has printed the error), which breaks the others' pending collectives,
and they then exit with status 2 without a message of their own (``PeerFailed``).
"""
import atexit
import contextlib
import os

import torch
import torch.distributed as dist

from .errors import UsageError


_PEER_GONE = ("Connection closed by peer", "Connection reset by peer")


class PeerFailed(SystemExit):
    """Another process of the torchrun job stopped (and printed why); this one exits quietly with status 2."""

    def __init__(self):
        super().__init__(2)


def parse_device(name, option):
    """``name`` as a ``torch.device``, or None for None; a UsageError, naming ``option`` (where the name came
    from), for a name PyTorch does not know, for CUDA on a machine without that CUDA GPU, and for a device this
    PyTorch cannot compute on (``mps`` off a Mac, ``meta``, a backend it was not built with)."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"Unknown {option} {name!r}; use cpu, cuda or cuda:N (or leave it out: CUDA when there "
                         f"is a GPU, else the CPU).") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {name}: this machine has no CUDA GPU that PyTorch can use; run on the CPU "
                             f"with {option} cpu, or leave {option} out.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise UsageError(f"{option} {name}: this machine has no CUDA GPU {device.index}; its {count} GPU(s) are "
                             f"cuda:0 to cuda:{count - 1}.")
    elif device.type != "cpu":
        _check_computes(device, name, option)
    return device


def _check_computes(device, name, option):
    """Compute 1 + 1 on ``device`` and copy it back, the least a model needs; a UsageError if that fails.

    Not for CUDA, which is checked above without creating a context (under torchrun every process would
    create one on the first GPU)."""
    try:
        (torch.ones(1, device=device) + 1).cpu()
    except Exception as error:  # each backend fails its own way: NotImplementedError, AssertionError, ...
        reason = str(error).strip().splitlines()[0].split(". ")[0].rstrip(".") or type(error).__name__
        raise UsageError(f"{option} {name}: this PyTorch cannot compute on {device.type} devices ({reason}); use "
                         f"{option} cpu, or cuda on a machine with a CUDA GPU.") from None


def init_from_environment(device_name=None):
    """Join the process group when started by torchrun; return (rank, world_size, device).

    NCCL on GPUs, gloo on CPU; each process uses the GPU of its LOCAL_RANK. As in torchvision's references,
    torchrun with one process also forms a group (and trains with DDP), which exercises NCCL on one GPU.
    """
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name is None:
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if launched else (device.index or 0))
        torch.cuda.set_device(device)
    if launched and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(cleanup)
    return rank, world_size, device


def is_distributed():
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def peers_alive():
    """Around a process's work: a collective (a barrier, DDP's gradient all-reduce) that fails because another
    process went away ends this one quietly with ``PeerFailed``."""
    try:
        yield
    except RuntimeError as error:
        if is_distributed() and any(sign in str(error) for sign in _PEER_GONE):
            raise PeerFailed() from None
        raise


def barrier():
    if is_distributed():
        dist.barrier()


def cleanup():
    if is_distributed():
        dist.destroy_process_group()


def broadcast_buffers(module):
    """Give every process the main process's buffers (BatchNorm running statistics).

    DDP broadcasts them at the start of each training forward, so after the last step each process holds the
    statistics of its own last batch; evaluating shards with those would not match the saved checkpoint.
    """
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def mean_over_processes(values, device):
    """The mean over the processes of each number in ``values`` (a list), on every process; the list itself
    when not distributed. Used for the logged epoch loss and accuracy, which each process measures on its
    own batches."""
    if not is_distributed():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return (total / dist.get_world_size()).tolist()


def gather_rows(tensor, total_rows):
    """All-gather a (n_rank, D) tensor whose rows are this rank's share ``rank::world_size`` of a
    (total_rows, D) tensor, and return the full tensor in the original row order on every rank.

    A rank with no rows may pass any (0, d) tensor: D is taken from the others.
    """
    if not is_distributed():
        return tensor
    world_size = dist.get_world_size()
    per_rank = -(-total_rows // world_size)
    width = torch.tensor([tensor.shape[1]], device=tensor.device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    padded = tensor.new_zeros((per_rank, int(width)))
    if len(tensor):
        padded[: len(tensor)] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return interleave(gathered, total_rows)


def interleave(shards, total_rows):
    """Rows ``0, 1, 2, ...`` from equally padded shards where shard r holds rows ``r::len(shards)``."""
    per_rank = shards[0].shape[0]
    return torch.stack(shards, dim=1).reshape(per_rank * len(shards), *shards[0].shape[1:])[:total_rows]
