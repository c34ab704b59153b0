"""torchrun with 2 gloo processes on CPU: one set of outputs, gathered evaluation, failures that do not hang."""
import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import main
from reid import checkpoint, distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # end to end through main.py: `pytest -m "not slow"` skips them


def torchrun(*args, processes=2, timeout=120):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone",
               "main.py", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def ddp_args(tiny_args):
    """``tiny_args`` on the CPU (gloo) over every training identity."""
    return lambda data_dir, logs_dir, *extra: tiny_args(data_dir, logs_dir, "--combine-trainval", "--device", "cpu",
                                                        *extra)


@pytest.fixture(scope="module")
def ddp_run(ddp_args, tiny_synthetic, tmp_path_factory):
    """One epoch with 2 processes and the identity sampler (per-process batch 8 = 4 ids x 2 images)."""
    logs = tmp_path_factory.mktemp("ddp")
    result = torchrun(*ddp_args(tiny_synthetic, logs, "--epochs", "1", "--num-instances", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return logs, result


@pytest.fixture(scope="module")
def single_evaluation(ddp_args, ddp_run, tiny_synthetic, tmp_path_factory):
    """The DDP run's checkpoint evaluated by one process, with the CUDA-only flags given (ignored on CPU)."""
    logs = tmp_path_factory.mktemp("single")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main.main(ddp_args(tiny_synthetic, logs, "--evaluate", "--resume",
                                   str(ddp_run[0] / "checkpoint.pth.tar"), "--amp", "--channels-last",
                                   "--compile", "--sync-bn"))
    assert code == 0
    return logs, stdout.getvalue()


def test_only_the_main_process_writes(ddp_run):
    logs, result = ddp_run
    files = sorted(os.listdir(logs))
    events = [name for name in files if name.startswith("events.out.tfevents.")]
    assert len(events) == 1, files
    assert [name for name in files if name not in events] == [
        "checkpoint.pth.tar", "curves.png", "log.txt", "metrics.csv", "model_best.pth.tar", "per_query.csv",
        "results.json", "run.json"]
    log = (logs / "log.txt").read_text()
    for line in ("command:", "x 2 processes", "Epoch 1/1", "Mean AP", "results written"):
        assert log.count(line) == 1, line
        assert result.stdout.count(line) == 1, line
    assert checkpoint.load(str(logs / "checkpoint.pth.tar"))["epoch"] == 1


def test_gathered_evaluation_equals_one_process(ddp_run, single_evaluation):
    """The shards are gathered back in the order of the query and gallery lists."""
    gathered = json.loads((ddp_run[0] / "results.json").read_text())
    single = json.loads((single_evaluation[0] / "results.json").read_text())
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP", "num_valid_queries"):
        assert gathered[key] == pytest.approx(single[key], abs=1e-6), key
    for view, values in gathered["cmc_views"].items():
        assert values == pytest.approx(single["cmc_views"][view], abs=1e-6), view


def test_cuda_only_flags_are_noted_and_ignored_on_cpu(single_evaluation):
    output = single_evaluation[1]
    assert "note: --amp, --channels-last, --compile, --sync-bn only apply on CUDA; ignored on cpu." in output


def test_an_error_on_the_main_process_stops_the_other_promptly(tmp_path):
    """Rank 0 fails while loading the dataset and rank 1 waits for it at a barrier: both exit, one message."""
    result = torchrun("-d", "market", "--data-dir", str(tmp_path / "missing"), "--logs-dir", str(tmp_path / "logs"),
                      "-a", "resnet18", "--no-pretrained", "-j", "0", "--device", "cpu", timeout=60)
    assert result.returncode != 0
    assert result.stderr.count("error: The dataset folder") == 1
    assert "[rank1]" not in result.stderr and "Connection" not in result.stderr
    assert "exitcode  : 2" in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_nccl_with_one_process_on_a_gpu(ddp_args, tiny_synthetic, tmp_path):
    """torchrun with one process forms an NCCL group and trains with DDP (two processes would need two GPUs)."""
    result = torchrun(*ddp_args(tiny_synthetic, tmp_path, "--epochs", "1", "--device", "cuda", "--amp",
                                 "--channels-last", "--sync-bn", "--cache-images", "-j", "2"), processes=1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on cuda:0" in result.stdout and (tmp_path / "results.json").is_file()


def _gather_in_two_processes(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        full = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
        rows = distributed.gather_rows(full[rank::2], total_rows=7)
        one_row = distributed.gather_rows(full[:1] if rank == 0 else torch.empty(0, 0), total_rows=1)
        norm = torch.nn.BatchNorm1d(3)
        norm.running_mean.fill_(float(rank))
        distributed.broadcast_buffers(norm)
        means = distributed.mean_over_processes([1.0 + rank, 10.0 * rank], torch.device("cpu"))
        torch.save({"rows": rows, "one_row": one_row, "running_mean": norm.running_mean, "means": means},
                   os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gather_rows_restores_the_order_buffers_follow_rank_0_and_means_are_shared(tmp_path):
    mp.spawn(_gather_in_two_processes, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    full = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"{rank}.pt")
        assert torch.equal(result["rows"], full)
        assert torch.equal(result["one_row"], full[:1]), "a rank with no rows takes the width from the others"
        assert torch.equal(result["running_mean"], torch.zeros(3))
        assert result["means"] == [1.5, 5.0], "the logged loss and accuracy are the mean over the processes"


def test_interleave_undoes_the_strided_split():
    full = torch.arange(10).view(10, 1)
    shards = [torch.cat([full[r::3], torch.full((4 - len(full[r::3]), 1), -1)]) for r in range(3)]
    assert torch.equal(distributed.interleave(shards, 10), full)
