"""Time and peak memory of the evaluation at Market-1501 or MSMT17 scale, on generated features; prints one JSON
object.

    .venv/bin/python -m benchmarks.eval_speed --preset market --rerank        # 3,368 x 15,913, 256-d
    .venv/bin/python -m benchmarks.eval_speed --preset msmt17 --rerank        # 11,659 x 82,161, 256-d
    .venv/bin/python -m benchmarks.eval_speed --preset msmt17 --dim 12288     # the DSP's retrieval feature

Each part runs in a fresh process, so that its peak resident memory (``peak_rss_mib``, which includes the
features and the Python runtime) is its own:

- ``distances``: every block of plain distances computed and dropped (``metrics.distance_blocks``);
- ``evaluation``: ``metrics.evaluate_blocks`` on those blocks, as ``retrieval_metrics`` runs it;
  ``distance_seconds`` is the time spent producing blocks, ``ranking_seconds`` the rest;
- ``rerank`` (with ``--rerank``): the same on ``metrics.re_ranked_blocks``; ``rerank_seconds`` is the time spent
  producing re-ranked blocks.

The features: each identity has a centre in a 32-dimensional latent space, each camera a shift and each image its
own noise (distractors, id 0, get centres of their own); latent vectors are scaled to unit length and embedded in
``--dim`` dimensions by a random orthonormal map, so distances, and so the metrics, do not depend on ``--dim``.
Fixed seed. Run it as a module from the repository root.
"""
import argparse
import json
import multiprocessing
import resource
import time

import numpy as np
import torch

from reid import metrics

# Sizes of the public test splits (Market-1501's distractors are its id-0 gallery images), and the per-image
# noise that gives, measured at full size, rank-1 0.936 / mAP 0.783 (market) and 0.804 / 0.506 (msmt17).
PRESETS = {
    "market": dict(queries=3368, gallery=15913, ids=750, cameras=6, distractors=2798, noise=0.66),
    "msmt17": dict(queries=11659, gallery=82161, ids=3060, cameras=15, distractors=0, noise=0.76),
}
LATENT_DIM, CAMERA_SHIFT = 32, 0.35


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="market")
    parser.add_argument("--dim", type=int, default=256, help="feature dimension (default 256)")
    parser.add_argument("--rerank", action="store_true", help="also time k-reciprocal re-ranking")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="the features' type, as --eval-dtype sets it")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--queries", type=int, help="override the preset's number of queries")
    parser.add_argument("--gallery", type=int, help="override the preset's number of gallery images")
    parser.add_argument("--chunk-size", type=int, help="queries per block of distances (default: the library's)")
    parser.add_argument("--rerank-chunk-size", type=int, default=metrics.RERANK_CHUNK_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is visible")
    return args


def problem_sizes(args):
    sizes = dict(PRESETS[args.preset])
    for name in ("queries", "gallery"):
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    scale = sizes["queries"] / PRESETS[args.preset]["queries"]
    sizes["ids"] = max(1, min(sizes["queries"], round(sizes["ids"] * scale)))
    sizes["distractors"] = round(sizes["distractors"] * sizes["gallery"] / PRESETS[args.preset]["gallery"])
    return sizes


def make_problem(sizes, dim, dtype, seed):
    """(query features, gallery features, q_pids, g_pids, q_camids, g_camids) as described in the module's
    docstring; features are made a chunk of rows at a time, so that only the result is held in full."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    num_ids, num_cameras = sizes["ids"], sizes["cameras"]
    q_pids = 1 + rng.permutation(np.arange(sizes["queries"]) % num_ids)
    g_pids = np.concatenate([1 + np.arange(sizes["gallery"] - sizes["distractors"]) % num_ids,
                             np.zeros(sizes["distractors"], dtype=np.int64)])
    q_camids, g_camids = rng.integers(0, num_cameras, len(q_pids)), rng.integers(0, num_cameras, len(g_pids))
    latent_dim = min(LATENT_DIM, dim)
    centres = torch.randn(num_ids + 1, latent_dim, generator=generator)
    shifts = CAMERA_SHIFT * torch.randn(num_cameras, latent_dim, generator=generator)
    embedding_generator = torch.Generator().manual_seed(seed + 1)  # the latent vectors do not depend on ``dim``
    embedding = torch.linalg.qr(torch.randn(dim, latent_dim, generator=embedding_generator)).Q.T

    def features(pids, camids):
        result = torch.empty(len(pids), dim, dtype=getattr(torch, dtype))
        for start in range(0, len(pids), 4096):
            own = torch.as_tensor(pids[start:start + 4096])
            latent = centres[own] + shifts[torch.as_tensor(camids[start:start + 4096])]
            distractor = own == 0
            latent[distractor] = torch.randn(int(distractor.sum()), latent_dim, generator=generator)
            latent += sizes["noise"] * torch.randn(latent.shape, generator=generator)
            result[start:start + len(own)] = torch.nn.functional.normalize(latent, dim=1) @ embedding
        return result

    return features(q_pids, q_camids), features(g_pids, g_camids), q_pids, g_pids, q_camids, g_camids


class TimedBlocks:
    """Iterates over ``blocks``, adding the time spent producing each one to ``seconds``."""

    def __init__(self, blocks, device):
        self.blocks, self.device, self.seconds = iter(blocks), device, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            block = next(self.blocks)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return block
        finally:
            self.seconds += time.perf_counter() - start


def run_part(part, args):
    """One part (``distances``, ``evaluation`` or ``rerank``) on a freshly made problem: its figures."""
    sizes = problem_sizes(args)
    query, gallery, *labels = make_problem(sizes, args.dim, args.dtype, args.seed)
    device = torch.device(args.device)
    figures = {"rss_before_mib": current_rss_mib()}
    start = time.perf_counter()
    if part == "distances":
        blocks = TimedBlocks(metrics.distance_blocks(query, gallery, chunk_size=args.chunk_size, device=device),
                             device)
        for _ in blocks:
            pass
    else:
        if part == "rerank":
            blocks = metrics.re_ranked_blocks(query, gallery, chunk_size=args.rerank_chunk_size, device=device)
        else:
            blocks = metrics.distance_blocks(query, gallery, chunk_size=args.chunk_size, device=device)
        blocks = TimedBlocks(blocks, device)
        results = metrics.evaluate_blocks(blocks, (len(query), len(gallery)), *labels)
        figures.update({key: round(results[key], 4) for key in ("rank1", "mAP", "mINP")})
        figures["ranking_seconds"] = round(time.perf_counter() - start - blocks.seconds, 3)
    figures["rerank_seconds" if part == "rerank" else "distance_seconds"] = round(blocks.seconds, 3)
    figures["seconds"] = round(time.perf_counter() - start, 3)
    figures["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if device.type == "cuda":
        figures["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20)
    return figures


def current_rss_mib():
    with open("/proc/self/statm") as statm:
        return round(int(statm.read().split()[1]) * resource.getpagesize() / 2 ** 20)


def main(argv=None):
    args = parse_args(argv)
    sizes = problem_sizes(args)
    element_bytes = 2 if args.dtype == "float16" else 4
    report = {"preset": args.preset, **sizes, "dim": args.dim, "dtype": args.dtype, "device": args.device,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "features_mib": round((sizes["queries"] + sizes["gallery"]) * args.dim * element_bytes / 2 ** 20),
              "distance_matrix_mib": round(sizes["queries"] * sizes["gallery"] * 4 / 2 ** 20)}
    context = multiprocessing.get_context("spawn")
    for part in ("distances", "evaluation") + (("rerank",) if args.rerank else ()):
        with context.Pool(1) as pool:
            report[part] = pool.apply(run_part, (part, args))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
