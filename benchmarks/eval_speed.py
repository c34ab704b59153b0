"""Time reid.metrics.evaluate_rank on a Market-1501-sized problem; prints one JSON object.

    .venv/bin/python -m benchmarks.eval_speed                                   # 3368 x 15913, like Market-1501
    .venv/bin/python -m benchmarks.eval_speed --queries 50000 --gallery 50000 --no-argsort

The problem: about 750 identities per 3,368 queries, each with about 17 gallery images spread over 6 cameras,
plus distractor gallery images with id 0 (2,800 per 15,913); Euclidean distances between synthetic features
(an identity centre, a camera shift and per-image noise), so correct matches tend to be nearer. Fixed seed.
``numpy_argsort_seconds`` times np.argsort(distmat, axis=1) on the same matrix, the step that dominates the
usual Cython evaluator.
"""
import argparse
import json
import resource
import time

import numpy as np
import torch

from reid import metrics

MARKET_QUERIES, MARKET_GALLERY, MARKET_IDS, MARKET_DISTRACTORS = 3368, 15913, 750, 2800


def make_problem(num_queries, num_gallery, seed=0, feature_dim=64, num_cameras=6, camera_shift=0.5, noise=0.9):
    """(distmat (Q, G) float32 tensor, q_pids, g_pids, q_camids, g_camids), scaled from Market-1501's sizes."""
    rng = np.random.default_rng(seed)
    num_ids = max(1, round(num_queries * MARKET_IDS / MARKET_QUERIES))
    num_distractors = round(num_gallery * MARKET_DISTRACTORS / MARKET_GALLERY)
    q_pids = 1 + rng.permutation(np.arange(num_queries) % num_ids)
    g_pids = np.concatenate([1 + np.arange(num_gallery - num_distractors) % num_ids,
                             np.zeros(num_distractors, dtype=np.int64)])
    q_camids = rng.integers(0, num_cameras, num_queries)
    g_camids = rng.integers(0, num_cameras, num_gallery)
    centres = rng.standard_normal((num_ids + 1, feature_dim), dtype=np.float32)
    shifts = camera_shift * rng.standard_normal((num_cameras, feature_dim), dtype=np.float32)

    def features(pids, camids):
        own_centres = centres[pids]
        distractor = pids == 0
        own_centres[distractor] = rng.standard_normal((distractor.sum(), feature_dim), dtype=np.float32)
        return own_centres + shifts[camids] + noise * rng.standard_normal((len(pids), feature_dim), dtype=np.float32)

    distmat = metrics.pairwise_distance(features(q_pids, q_camids), features(g_pids, g_camids))
    return distmat, q_pids, g_pids, q_camids, g_camids


def best_time(function, repeats):
    """(smallest wall time of ``repeats`` calls, the last call's result)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_rss_mib():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=MARKET_QUERIES)
    parser.add_argument("--gallery", type=int, default=MARKET_GALLERY)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    parser.add_argument("--no-argsort", action="store_true",
                        help="skip the np.argsort timing (its int64 result is twice the size of the distances)")
    args = parser.parse_args()

    distmat, q_pids, g_pids, q_camids, g_camids = make_problem(args.queries, args.gallery, args.seed)
    peak_before_evaluation = peak_rss_mib()
    seconds, result = best_time(lambda: metrics.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids),
                                args.repeats)
    argsort_seconds = None
    if not args.no_argsort:
        argsort_seconds, _ = best_time(lambda: np.argsort(distmat.numpy(), axis=1), args.repeats)
    print(json.dumps({
        "queries": args.queries, "gallery": args.gallery, "distmat_dtype": str(distmat.dtype),
        "evaluate_rank_seconds": round(seconds, 4),
        "numpy_argsort_seconds": None if argsort_seconds is None else round(argsort_seconds, 4),
        "rank1": round(float(result["cmc"][0]), 4), "mAP": round(result["mAP"], 4),
        "mINP": round(result["mINP"], 4), "num_valid_queries": result["num_valid_queries"],
        "threads": torch.get_num_threads(),
        "peak_rss_mib_before_evaluate_rank": peak_before_evaluation,
        "peak_rss_mib": peak_rss_mib(),
    }))


if __name__ == "__main__":
    main()
