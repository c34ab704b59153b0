"""Re-ID evaluation: distances, CMC / mAP / mINP, open-reid's CMC views and k-reciprocal re-ranking, in memory
bounded by chunk sizes rather than by the (Q, G) distance matrix.

Distances come as blocks of consecutive query rows (``distance_blocks``, ``re_ranked_blocks``) and the ranking
consumes them block by block, so a whole evaluation holds the features, one block and O(Q + G) labels and
ranks. The (Q, G) matrix is built only when asked for (``pairwise_distance``, ``re_rank``,
``retrieval_metrics(keep_distances=True)``).

The modules: ``distance`` (plain distances), ``rerank`` (k-reciprocal re-ranking) and ``rank`` (the ranking
protocol, CMC, mAP, mINP, each query's figures and the CMC views). Their public functions are all importable
from here.

NaN distances are not supported.
"""
import torch

from .distance import DISTANCE_CHUNK_SIZE, distance_blocks, pairwise_distance, squared_norms
from .rank import cmc_views, evaluate_blocks, evaluate_rank
from .rerank import RERANK_CHUNK_SIZE, re_rank, re_ranked_blocks

__all__ = ["DISTANCE_CHUNK_SIZE", "RERANK_CHUNK_SIZE", "cmc_views", "distance_blocks", "evaluate_blocks",
           "evaluate_rank", "pairwise_distance", "re_rank", "re_ranked_blocks", "retrieval_metrics", "squared_norms"]


def retrieval_metrics(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids, metric="euclidean",
                      rerank=False, device=None, keep_distances=False, chunk_size=None,
                      rerank_chunk_size=RERANK_CHUNK_SIZE, self_matches=None):
    """Everything the evaluator reports for (N, D) query and gallery features (float32 or float16):
    ``rank1``/``rank5``/``rank10``, ``mAP``, ``mINP``, ``num_valid_queries``, ``cmc_views`` (see ``cmc_views``),
    ``per_query`` (each valid query's figures, see ``evaluate_rank``) and, with ``keep_distances``, the (Q, G)
    ``distances`` tensor (else None). ``self_matches`` (query indices, gallery indices) are gallery entries that
    are the query image itself, ignored for that query.

    Distances are computed on ``device`` (default: the features') in blocks of ``chunk_size`` queries (see
    ``distance_blocks``; ``rerank_chunk_size`` with ``rerank``) and ranked as they come (``evaluate_blocks``),
    so only ``keep_distances`` holds the (Q, G) matrix. The results equal ``evaluate_rank`` and ``cmc_views`` of
    the ``pairwise_distance`` (or re-ranked) distances.
    """
    if rerank:
        blocks = re_ranked_blocks(query_features, gallery_features, metric, chunk_size=rerank_chunk_size,
                                  device=device)
    else:
        blocks = distance_blocks(query_features, gallery_features, metric, chunk_size, device)
    shape = (len(query_features), len(gallery_features))
    distances = None
    if keep_distances:
        device = torch.as_tensor(query_features).device if device is None else torch.device(device)
        distances = torch.empty(shape, dtype=torch.float32, device=device)
        blocks = _kept(blocks, distances)
    return {**evaluate_blocks(blocks, shape, q_pids, g_pids, q_camids, g_camids, self_matches),
            "distances": distances}


def _kept(blocks, distances):
    """Pass ``blocks`` through, copying each into the (Q, G) tensor ``distances``."""
    for start, block in blocks:
        distances[start:start + len(block)] = block
        yield start, block
