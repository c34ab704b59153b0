"""Re-ID evaluation: distances, CMC / mAP / mINP, open-reid's CMC views and k-reciprocal re-ranking.

Ranking protocol: for a query, gallery entries with the query's id and camera are ignored; the correct matches
are the remaining entries with the query's id. Ties in distance are ordered as a stable sort by distance would
order them (by gallery index), so every function here is deterministic.

NaN distances are not supported.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F


def pairwise_distance(query_features, gallery_features, metric="euclidean", chunk_size=4096, device=None):
    """(Q, G) float32 distances between rows of ``query_features`` and ``gallery_features``.

    Computed, and returned, on ``device`` (default: the device of ``query_features``), ``chunk_size`` queries at
    a time. ``euclidean``: sqrt(max(|q|^2 + |g|^2 - 2 q.g, 0)); ``cosine``: 1 - q.g / (|q| |g|).
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric {metric!r}; expected 'euclidean' or 'cosine'")
    query = torch.as_tensor(query_features)
    gallery = torch.as_tensor(gallery_features)
    device = query.device if device is None else torch.device(device)
    query = query.to(device=device, dtype=torch.float32)
    gallery = gallery.to(device=device, dtype=torch.float32)
    if metric == "cosine":
        query = F.normalize(query, dim=1)
        gallery = F.normalize(gallery, dim=1)
    gallery_squared_norms = gallery.pow(2).sum(dim=1)
    distances = torch.empty(len(query), len(gallery), dtype=torch.float32, device=device)
    for start in range(0, len(query), chunk_size):
        query_chunk = query[start:start + chunk_size]
        dot = query_chunk @ gallery.T
        if metric == "cosine":
            distances[start:start + chunk_size] = 1 - dot
        else:
            squared = query_chunk.pow(2).sum(dim=1, keepdim=True) + gallery_squared_norms - 2 * dot
            distances[start:start + chunk_size] = squared.clamp_min_(0).sqrt_()
    return distances


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """CMC (``max_rank`` fractions), mAP and mINP of a (Q, G) distance matrix (numpy array or torch tensor).

    Queries without any correct match are skipped; ``num_valid_queries`` counts the others. AP is the mean, over
    a query's correct matches, of the precision at each match's rank; INP is the number of correct matches over
    the rank of the last one. Raises ValueError if no query has a correct match.
    """
    first_match_hits = np.zeros(max_rank, dtype=np.int64)
    ap_sum = inp_sum = 0.0
    num_valid = 0
    for ranks, num_matches in _correct_match_ranks(distmat, q_pids, g_pids, q_camids, g_camids):
        first_match_hits += _count_below(ranks[:, 0], max_rank)
        in_list = np.arange(ranks.shape[1]) < num_matches[:, None]
        precision = np.arange(1, ranks.shape[1] + 1) / (ranks + 1)
        ap_sum += float((np.where(in_list, precision, 0.0).sum(axis=1) / num_matches).sum())
        last_ranks = ranks[np.arange(len(ranks)), num_matches - 1]
        inp_sum += float((num_matches / (last_ranks + 1)).sum())
        num_valid += len(ranks)
    _require_valid_queries(num_valid)
    return {"cmc": np.cumsum(first_match_hits) / num_valid, "mAP": ap_sum / num_valid,
            "mINP": inp_sum / num_valid, "num_valid_queries": num_valid}


def cmc_views(distmat, q_pids, g_pids, q_camids, g_camids, topk=10, seed=0):
    """open-reid's three CMC curves (``topk`` fractions each) for its printed table.

    - ``market1501``: the standard CMC (the first correct match counts), equal to ``evaluate_rank``'s.
    - ``allshots``: every correct match of a query counts, with weight 1 / (its number of correct matches), at
      the number of wrong (non-ignored) entries ranked before it.
    - ``cuhk03``: only gallery cameras other than the query's; one entry per gallery id is drawn at random (10
      draws from ``np.random.default_rng(seed)``, each weighing 1/10) and the drawn correct match counts at its
      rank among the drawn entries.
    Raises ValueError if no query has a correct match.
    """
    market_hits = np.zeros(topk, dtype=np.int64)
    allshots_hits = np.zeros(topk)
    num_valid = 0
    for ranks, num_matches in _correct_match_ranks(distmat, q_pids, g_pids, q_camids, g_camids):
        market_hits += _count_below(ranks[:, 0], topk)
        match_order = np.arange(ranks.shape[1])
        wrong_before = ranks - match_order
        counted = (match_order < num_matches[:, None]) & (wrong_before < topk)
        weights = np.broadcast_to(1.0 / num_matches[:, None], ranks.shape)
        allshots_hits += np.bincount(wrong_before[counted], weights=weights[counted], minlength=topk)
        num_valid += len(ranks)
    _require_valid_queries(num_valid)
    cuhk03 = _single_shot_other_camera_cmc(distmat, q_pids, g_pids, q_camids, g_camids, topk, seed)
    return {"allshots": np.cumsum(allshots_hits) / num_valid, "cuhk03": cuhk03,
            "market1501": np.cumsum(market_hits) / num_valid}


def re_rank(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) of (Q, G) distances; returns (Q, G) distances.

    Follows the public reference implementation: the inputs are plain (not squared) distances, which are
    squared and divided by their column maximum over the joint (Q+G, Q+G) matrix; ``k1`` sets the k-reciprocal
    neighbourhoods (``round(k1 / 2)`` for the expansion), ``k2`` the query expansion and ``lambda_value`` the
    weight of the original distance against the Jaccard distance. Computed with torch on the inputs' device;
    returns a tensor for a tensor ``q_g_dist``, else a numpy array. Tied neighbours are taken in arbitrary order.
    """
    return_numpy = not torch.is_tensor(q_g_dist)
    q_g = torch.as_tensor(q_g_dist)
    device = q_g.device
    q_g = q_g.to(torch.float32)
    q_q = torch.as_tensor(q_q_dist).to(device=device, dtype=torch.float32)
    g_g = torch.as_tensor(g_g_dist).to(device=device, dtype=torch.float32)
    num_query = len(q_g)
    # The reference divides the joint matrix by its column maxima, then transposes: built transposed here.
    original = torch.cat([torch.cat([q_q.T, q_g], dim=1), torch.cat([q_g.T, g_g.T], dim=1)]).pow_(2)
    original.div_(original.max(dim=1, keepdim=True).values)
    neighbours = torch.topk(original, k=min(max(k1 + 1, k2), len(original)), dim=1, largest=False).indices
    weights = _k_reciprocal_weights(original, neighbours, k1)
    if k2 != 1:
        weights = _expand_queries(weights, neighbours[:, :k2])
    jaccard = _jaccard_distance(weights, num_query, len(original))
    final = jaccard.mul_(1 - lambda_value).add_(original[:num_query, num_query:], alpha=lambda_value)
    return final.cpu().numpy() if return_numpy else final


def _correct_match_ranks(distmat, q_pids, g_pids, q_camids, g_camids, chunk_elements=1 << 21):
    """Yield (ranks, num_matches) for the queries with a correct match, a chunk of queries at a time.

    ranks[i, j] is the 0-based rank of query i's (j+1)-th correct match among its non-ignored gallery entries,
    in the stable order by distance; columns j >= num_matches[i] are padding. Chunks are processed by
    ``torch.get_num_threads()`` threads (numpy releases the GIL in the heavy steps).
    """
    q_pids, g_pids, q_camids, g_camids = (_as_numpy(labels) for labels in (q_pids, g_pids, q_camids, g_camids))
    num_query, num_gallery = np.shape(distmat)
    if (len(q_pids), len(q_camids), len(g_pids), len(g_camids)) != (num_query, num_query, num_gallery, num_gallery):
        raise ValueError(f"distmat has shape {tuple(distmat.shape)} but there are {len(q_pids)} query ids, "
                         f"{len(q_camids)} query cameras, {len(g_pids)} gallery ids, {len(g_camids)} gallery cameras")
    if num_gallery == 0:
        return
    index_bits = max(1, (num_gallery - 1).bit_length())
    chunk_rows = max(1, min(chunk_elements // num_gallery, 1 << (31 - index_bits)))
    groups = _gallery_groups(g_pids)

    def chunk_ranks(start):
        chunk = slice(start, min(start + chunk_rows, num_query))
        rows = _distance_rows(distmat, chunk)
        entries, is_match, is_ignored = _same_id_entries(groups, g_camids, q_pids[chunk], q_camids[chunk])
        valid = is_match.any(axis=1)
        if not valid.all():
            rows, entries, is_match, is_ignored = rows[valid], entries[valid], is_match[valid], is_ignored[valid]
        if len(rows) == 0:
            return None
        return _ranks_in_chunk(rows, entries, is_match, is_ignored, index_bits)

    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        for result in pool.map(chunk_ranks, range(0, num_query, chunk_rows)):
            if result is not None:
                yield result


def _ranks_in_chunk(rows, entries, is_match, is_ignored, index_bits):
    """``_correct_match_ranks`` for one chunk of (C, G) distances, every row with at least one correct match.

    The rank of a correct match is the number of non-ignored entries that sort before it. Entries farther than
    the farthest correct match never do; those nearer than the nearest are only counted; the rest (few, for a
    useful model) are located among the sorted correct matches with one binary search on packed
    (row, distance, gallery index) integer keys.
    """
    num_rows, num_gallery = rows.shape
    row_index = np.arange(num_rows)[:, None]
    entry_distances = rows[row_index, entries]
    num_matches = is_match.sum(axis=1)
    nearest = np.where(is_match, entry_distances, np.inf).min(axis=1)
    farthest = np.where(is_match, entry_distances, -np.inf).max(axis=1, keepdims=True)
    candidates = rows <= farthest
    ignored_rows, ignored_slots = np.nonzero(is_ignored)
    candidates[ignored_rows, entries[ignored_rows, ignored_slots]] = False
    candidate_rows, candidate_columns = np.divmod(np.flatnonzero(candidates), num_gallery)
    candidate_distances = rows[candidate_rows, candidate_columns]
    nearer = candidate_distances < nearest[candidate_rows]
    nearer_count = np.bincount(candidate_rows[nearer], minlength=num_rows)
    between_rows, between_columns = candidate_rows[~nearer], candidate_columns[~nearer]
    match_rows, match_slots = np.nonzero(is_match)
    match_columns = entries[match_rows, match_slots]
    keys = _order_keys(np.concatenate([candidate_distances[~nearer], rows[match_rows, match_columns]]))
    packed = (np.concatenate([between_rows, match_rows]) << (32 + index_bits)) | (keys << index_bits)
    packed |= np.concatenate([between_columns, match_columns])
    between_keys, match_keys = packed[:len(between_rows)], np.sort(packed[len(between_rows):])
    first_match_slot = np.cumsum(num_matches) - num_matches
    matches_not_after = np.searchsorted(match_keys, between_keys, side="right") - first_match_slot[between_rows]
    width = num_matches.max()
    histogram = np.bincount(between_rows * (width + 1) + matches_not_after, minlength=num_rows * (width + 1))
    beaten_between = np.cumsum(histogram.reshape(num_rows, width + 1)[:, :width], axis=1)
    return nearer_count[:, None] + beaten_between, num_matches


def _order_keys(values):
    """Integer keys in [0, 2**32) that order like ``values`` (equal values, equal keys)."""
    if values.dtype == np.float32:
        bits = (values + np.float32(0)).view(np.int32)
        return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64) + (1 << 31)
    return np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _gallery_groups(g_pids):
    """Gallery indices sorted by id (stably), with each id's start and size in that order."""
    order = np.argsort(g_pids, kind="stable")
    ids, starts, sizes = np.unique(g_pids[order], return_index=True, return_counts=True)
    return order, ids, starts, sizes


def _same_id_entries(groups, g_camids, pids, camids):
    """Each query's gallery entries with its id: (indices, is_match, is_ignored), padded (C, K) arrays."""
    order, ids, starts, sizes = groups
    slots = np.minimum(np.searchsorted(ids, pids), len(ids) - 1)
    present = ids[slots] == pids
    starts = np.where(present, starts[slots], 0)
    sizes = np.where(present, sizes[slots], 0)
    offsets = np.arange(sizes.max(initial=0))
    in_group = offsets < sizes[:, None]
    entries = order[np.where(in_group, starts[:, None] + offsets, 0)]
    same_camera = g_camids[entries] == camids[:, None]
    return entries, in_group & ~same_camera, in_group & same_camera


def _single_shot_other_camera_cmc(distmat, q_pids, g_pids, q_camids, g_camids, topk, seed, repeats=10,
                                  chunk_elements=1 << 18):
    """open-reid's CMC with separate camera sets and one random gallery entry per id (``repeats`` draws)."""
    q_pids, g_pids, q_camids, g_camids = (_as_numpy(labels) for labels in (q_pids, g_pids, q_camids, g_camids))
    rng = np.random.default_rng(seed)
    hits = np.zeros(topk)
    num_valid = 0
    for camera in np.unique(q_camids):
        other_cameras = np.flatnonzero(g_camids != camera)
        if len(other_cameras) == 0:
            continue
        order, ids, starts, sizes = _gallery_groups(g_pids[other_cameras])
        order = other_cameras[order]
        queries = np.flatnonzero(q_camids == camera)
        slots = np.minimum(np.searchsorted(ids, q_pids[queries]), len(ids) - 1)
        has_match = ids[slots] == q_pids[queries]
        queries, slots = queries[has_match], slots[has_match]
        num_valid += len(queries)
        chunk_rows = max(1, chunk_elements // len(ids))
        for start in range(0, len(queries), chunk_rows):
            chunk, chunk_slots = queries[start:start + chunk_rows], slots[start:start + chunk_rows]
            rows = _distance_rows(distmat, chunk)
            row_index = np.arange(len(chunk))
            for _ in range(repeats):
                drawn = order[starts + rng.integers(0, sizes, size=(len(chunk), len(ids)))]
                drawn_distances = rows[row_index[:, None], drawn]
                match = drawn[row_index, chunk_slots][:, None]
                match_distance = drawn_distances[row_index, chunk_slots][:, None]
                before = (drawn_distances < match_distance) | ((drawn_distances == match_distance) & (drawn < match))
                hits += _count_below(before.sum(axis=1), topk) / repeats
    _require_valid_queries(num_valid)
    return np.cumsum(hits) / num_valid


def _k_reciprocal_weights(original, neighbours, k1):
    """Row i: exp(-distance) over i's expanded k-reciprocal set, normalised to sum 1.

    Sparse (N, N) matrices are (rows, columns, values) triples here, sorted by row, then column.
    """
    num_all = len(original)
    reciprocal = neighbours[:, :k1 + 1]
    is_reciprocal = _reciprocal_mask(reciprocal)
    half = neighbours[:, :int(round(k1 / 2)) + 1]
    is_half = _reciprocal_mask(half)
    # A reciprocal neighbour c of i adds c's half-size set when more than 2/3 of that set is reciprocal to i.
    candidate_sets = half[reciprocal]
    candidate_valid = is_half[reciprocal] & is_reciprocal[:, :, None]
    shared = (candidate_sets[..., None] == reciprocal[:, None, None, :]) & is_reciprocal[:, None, None, :]
    shared_count = (shared.any(dim=3) & candidate_valid).sum(dim=2)
    expands = is_reciprocal & (shared_count > 2.0 / 3.0 * candidate_valid.sum(dim=2))
    added = candidate_valid & expands[:, :, None]
    members = torch.unique(torch.cat([
        torch.nonzero(is_reciprocal, as_tuple=True)[0] * num_all + reciprocal[is_reciprocal],
        torch.nonzero(added, as_tuple=True)[0] * num_all + candidate_sets[added]]))
    rows, columns = members // num_all, members % num_all
    values = torch.exp(-original[rows, columns])
    values /= torch.zeros(num_all, dtype=values.dtype, device=values.device).index_add_(0, rows, values)[rows]
    return rows, columns, values


def _reciprocal_mask(forward):
    """mask[i, t]: i is among the neighbours ``forward[j]`` of its own neighbour j = forward[i, t]."""
    own_index = torch.arange(len(forward), device=forward.device)[:, None, None]
    return (forward[forward] == own_index).any(dim=2)


def _expand_queries(weights, neighbours):
    """Row i becomes the mean of the rows of i's nearest ``neighbours`` (sparse triples in and out)."""
    rows, columns, values = weights
    num_all, count = neighbours.shape
    row_sizes = torch.bincount(rows, minlength=num_all)
    row_starts = torch.cumsum(row_sizes, dim=0) - row_sizes
    sources = neighbours.reshape(-1)
    segment, entry = _segment_positions(row_starts[sources], row_sizes[sources])
    keys, slots = torch.unique((segment // count) * num_all + columns[entry], return_inverse=True)
    sums = torch.zeros(len(keys), dtype=values.dtype, device=values.device).index_add_(0, slots, values[entry])
    return keys // num_all, keys % num_all, sums / count


def _jaccard_distance(weights, num_query, num_all, chunk_rows=256):
    """1 - s / (2 - s) with s = sum_k min(weights[q, k], weights[g, k]), for the first ``num_query`` rows (q)
    against the others (g): only the pairs of entries sharing a column k contribute, so they are enumerated."""
    rows, columns, values = weights
    device = values.device
    by_column = torch.argsort(columns * num_all + rows)
    column_rows, column_values = rows[by_column], values[by_column]
    column_sizes = torch.bincount(columns, minlength=num_all)
    column_starts = torch.cumsum(column_sizes, dim=0) - column_sizes
    row_bounds = list(range(0, num_query, chunk_rows)) + [num_query]
    entry_bounds = torch.searchsorted(rows, torch.tensor(row_bounds, device=device)).tolist()
    jaccard = torch.empty(num_query, num_all - num_query, dtype=values.dtype, device=device)
    for chunk, (start, stop) in enumerate(zip(row_bounds[:-1], row_bounds[1:])):
        entries = slice(entry_bounds[chunk], entry_bounds[chunk + 1])
        query_rows, query_columns, query_values = rows[entries] - start, columns[entries], values[entries]
        pair, partner = _segment_positions(column_starts[query_columns], column_sizes[query_columns])
        overlap = torch.minimum(query_values[pair], column_values[partner])
        shared = torch.zeros((stop - start) * num_all, dtype=values.dtype, device=device)
        shared.index_add_(0, query_rows[pair] * num_all + column_rows[partner], overlap)
        shared = shared.view(stop - start, num_all)[:, num_query:]
        jaccard[start:stop] = 1 - shared / (2 - shared)
    return jaccard


def _segment_positions(starts, sizes):
    """Every position of the segments [starts[s], starts[s] + sizes[s]), with its segment s."""
    segment = torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes)
    offset = torch.arange(len(segment), device=sizes.device) - (torch.cumsum(sizes, dim=0) - sizes)[segment]
    return segment, starts[segment] + offset


def _distance_rows(distmat, rows):
    """Rows (a slice or index array) of a tensor or array as a numpy array; float32/float64 CPU rows selected
    by a slice are not copied."""
    if not torch.is_tensor(distmat):
        return np.asarray(distmat)[rows]
    selected = distmat[rows if isinstance(rows, slice) else torch.as_tensor(rows)].detach()
    if selected.dtype not in (torch.float32, torch.float64):
        selected = selected.float()
    return selected.cpu().numpy()


def _as_numpy(values):
    return values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)


def _count_below(values, length):
    """Histogram of ``values`` over 0 .. length - 1 (larger values are dropped)."""
    return np.bincount(values[values < length], minlength=length)[:length]


def _require_valid_queries(num_valid):
    if num_valid == 0:
        raise ValueError("no query has a correct match in the gallery (an entry with the query's id from another "
                         "camera), so CMC and mAP are undefined")
