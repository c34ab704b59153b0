"""Re-ID evaluation: distances, CMC / mAP / mINP, open-reid's CMC views and k-reciprocal re-ranking, in memory
bounded by chunk sizes rather than by the (Q, G) distance matrix.

Distances come as blocks of consecutive query rows (``distance_blocks``, ``re_ranked_blocks``) and the ranking
consumes them block by block, so a whole evaluation holds the features, one block and O(Q + G) labels and
ranks. The (Q, G) matrix is built only when asked for (``pairwise_distance``, ``re_rank``,
``retrieval_metrics(keep_distances=True)``).

Ranking protocol: for a query, gallery entries with the query's id and camera are ignored; the correct matches
are the remaining entries with the query's id. Ties in distance are ordered as a stable sort by distance would
order them (by gallery index), so every function here is deterministic. The metrics do not depend on the block
size: each valid query's correct-match ranks are exact integers, and the sums over queries are made afterwards
in fixed groups of queries.

NaN distances are not supported.
"""
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

DISTANCE_CHUNK_SIZE = 4096  # most query rows per block of plain distances, by default
_DISTANCE_BLOCK_ELEMENTS = 1 << 26  # distances per block of plain distances, by default (256 MiB)
RERANK_CHUNK_SIZE = 512  # rows per step of the re-ranking (its blocks of final distances too)
_RANKING_ELEMENTS = 1 << 21  # distances ranked per step; also sets the groups of queries the sums are made over
_SINGLE_SHOT_ELEMENTS = 1 << 18  # entries drawn per step of the cuhk03 view; sets its random stream
_MATRIX_BLOCK_ELEMENTS = 1 << 24  # rows of a given distance matrix handed to the ranking at a time
_PAIR_ELEMENTS = 1 << 22  # feature values gathered per batch of single distances
_TILE_ELEMENTS = 1 << 25  # feature values converted to float32 at a time when the features are not float32


def pairwise_distance(query_features, gallery_features, metric="euclidean", chunk_size=None, device=None,
                      gallery_squared_norms=None):
    """(Q, G) float32 distances between rows of ``query_features`` and ``gallery_features``.

    Computed, and returned, on ``device`` (default: the device of ``query_features``), ``chunk_size`` queries at
    a time (see ``distance_blocks``). ``euclidean``: sqrt(max(|q|^2 + |g|^2 - 2 q.g, 0)); ``cosine``:
    1 - q.g / (|q| |g|). ``gallery_squared_norms`` (``squared_norms(gallery_features)``, Euclidean only) saves
    a pass over a gallery that is searched again and again.
    """
    query, gallery = _features_on_device(query_features, gallery_features, device)
    distances = torch.empty(len(query), len(gallery), dtype=torch.float32, device=query.device)
    blocks = distance_blocks(query, gallery, metric, chunk_size, gallery_squared_norms=gallery_squared_norms)
    for start, block in blocks:
        distances[start:start + len(block)] = block
    return distances


def squared_norms(features):
    """The squared Euclidean norm of every row of (N, D) ``features``, as a float32 tensor: what the distances
    compute for a gallery, to be passed back as ``gallery_squared_norms``."""
    return _Features(torch.as_tensor(features), "euclidean").squared_norms


def distance_blocks(query_features, gallery_features, metric="euclidean", chunk_size=None, device=None,
                    gallery_squared_norms=None):
    """Yield (start, (n, G) float32 distances of queries start .. start + n - 1), ``chunk_size`` queries at a time
    (default: 2^26 distances a block, at most ``DISTANCE_CHUNK_SIZE`` queries), on ``device`` (default: the
    device of ``query_features``); the distances are those of ``pairwise_distance``.

    Features may be float16: they are converted to float32 a block at a time. Float32 features with the
    Euclidean metric are used in place; otherwise the gallery is converted in tiles of ``_TILE_ELEMENTS`` values.
    Beyond the features, a block needs about twice its own size (the matrix product and the result).
    """
    _check_metric(metric)
    query, gallery = _features_on_device(query_features, gallery_features, device)
    if chunk_size is None:
        chunk_size = max(1, min(DISTANCE_CHUNK_SIZE, _DISTANCE_BLOCK_ELEMENTS // max(1, len(gallery))))
    return _plain_blocks(_Features(query, metric), _Features(gallery, metric, gallery_squared_norms), chunk_size)


def re_ranked_blocks(query_features, gallery_features, metric="euclidean", k1=20, k2=6, lambda_value=0.3,
                     chunk_size=RERANK_CHUNK_SIZE, device=None):
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) of the distances between the features, without the
    joint (Q + G)^2 matrix: yields (start, (n, G) float32 re-ranked distances of queries start .. start + n - 1).

    Same algorithm and parameters as ``re_rank``, whose three matrices are here the ``metric`` distances of the
    features. It keeps each item's nearest neighbours and sparse k-reciprocal weights (O((Q + G) * k1)), and
    computes the distances ``chunk_size`` rows at a time on ``device`` (default: the query features'); like
    ``distance_blocks`` it accepts float16 features.
    """
    _check_metric(metric)
    query, gallery = _features_on_device(query_features, gallery_features, device)
    return _re_ranked(_FeatureDistances(_Features(query, metric), _Features(gallery, metric)), k1, k2, lambda_value,
                      chunk_size)


def re_rank(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3, chunk_size=RERANK_CHUNK_SIZE):
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) of (Q, G) distances; returns (Q, G) distances.

    Follows the public reference implementation: the inputs are plain (not squared) distances, which are
    squared and divided by their column maximum over the joint (Q+G, Q+G) matrix; ``k1`` sets the k-reciprocal
    neighbourhoods (``round(k1 / 2)`` for the expansion), ``k2`` the query expansion and ``lambda_value`` the
    weight of the original distance against the Jaccard distance. Tied neighbours are taken by index (the
    reference leaves their order arbitrary). Computed with torch on the inputs' device, ``chunk_size`` rows at
    a time, without assembling the joint matrix (from features, ``re_ranked_blocks`` needs none of the three);
    returns a tensor for a tensor ``q_g_dist``, else a numpy array.
    """
    return_numpy = not torch.is_tensor(q_g_dist)
    q_g = torch.as_tensor(q_g_dist).to(torch.float32)
    q_q, g_g = (torch.as_tensor(d).to(device=q_g.device, dtype=torch.float32) for d in (q_q_dist, g_g_dist))
    final = torch.empty_like(q_g)
    for start, block in _re_ranked(_MatrixDistances(q_g, q_q, g_g), k1, k2, lambda_value, chunk_size):
        final[start:start + len(block)] = block
    return final.cpu().numpy() if return_numpy else final


def retrieval_metrics(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids, metric="euclidean",
                      rerank=False, device=None, keep_distances=False, chunk_size=None,
                      rerank_chunk_size=RERANK_CHUNK_SIZE):
    """Everything the evaluator reports for (N, D) query and gallery features (float32 or float16):
    ``rank1``/``rank5``/``rank10``, ``mAP``, ``mINP``, ``num_valid_queries``, ``cmc_views`` (see ``cmc_views``)
    and, with ``keep_distances``, the (Q, G) ``distances`` tensor (else None).

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
    return {**evaluate_blocks(blocks, shape, q_pids, g_pids, q_camids, g_camids), "distances": distances}


def evaluate_blocks(blocks, shape, q_pids, g_pids, q_camids, g_camids):
    """``retrieval_metrics``' results (``distances`` aside) from (start, rows) blocks of a (Q, G) = ``shape``
    distance matrix that cover the queries in order, as ``distance_blocks`` and ``re_ranked_blocks`` yield them.
    Each block is ranked, then dropped."""
    match_ranks, single_shot = _rank_blocks(blocks, shape, q_pids, g_pids, q_camids, g_camids,
                                            single_shot_topk=10, seed=0)
    ranking = _rank_metrics(match_ranks, max_rank=10)
    views = _cmc_views(match_ranks, single_shot, topk=10)
    return {"rank1": float(ranking["cmc"][0]), "rank5": float(ranking["cmc"][4]),
            "rank10": float(ranking["cmc"][9]), "mAP": float(ranking["mAP"]), "mINP": float(ranking["mINP"]),
            "num_valid_queries": int(ranking["num_valid_queries"]),
            "cmc_views": {name: [float(v) for v in cmc] for name, cmc in views.items()}}


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """CMC (``max_rank`` fractions), mAP and mINP of a (Q, G) distance matrix (numpy array or torch tensor).

    Queries without any correct match are skipped; ``num_valid_queries`` counts the others. AP is the mean, over
    a query's correct matches, of the precision at each match's rank; INP is the number of correct matches over
    the rank of the last one. Raises ValueError if no query has a correct match.
    """
    match_ranks, _ = _rank_blocks(_matrix_blocks(distmat), np.shape(distmat), q_pids, g_pids, q_camids, g_camids)
    return _rank_metrics(match_ranks, max_rank)


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
    match_ranks, single_shot = _rank_blocks(_matrix_blocks(distmat), np.shape(distmat), q_pids, g_pids, q_camids,
                                            g_camids, single_shot_topk=topk, seed=seed)
    return _cmc_views(match_ranks, single_shot, topk)


# Distances ------------------------------------------------------------------------------------------------------

class _Features:
    """(N, D) features on one device, served as float32 rows (scaled to unit length for the cosine metric).

    Float32 features with the Euclidean metric are served in place and form a single tile; otherwise rows are
    converted on demand, tiles of ``_TILE_ELEMENTS`` values at a time, so that float16 features are never held
    whole in float32.
    """

    def __init__(self, features, metric, squared_norms=None):
        self.features, self.metric = features, metric
        in_place = features.dtype == torch.float32 and metric == "euclidean"
        tile_rows = max(1, _TILE_ELEMENTS // max(1, features.shape[1]))
        self.tile_rows = max(1, len(features)) if in_place else tile_rows
        self.squared_norms = None
        if squared_norms is not None:
            self.squared_norms = torch.as_tensor(squared_norms, dtype=torch.float32).to(features.device)
        elif metric == "euclidean":
            self.squared_norms = torch.cat([self.rows(slice(start, start + tile_rows)).pow(2).sum(dim=1)
                                            for start in range(0, len(features), tile_rows)]
                                           or [features.new_empty(0, dtype=torch.float32)])

    def __len__(self):
        return len(self.features)

    @property
    def device(self):
        return self.features.device

    def rows(self, index):
        """Rows selected by a slice or an index tensor, as float32."""
        rows = self.features[index].float()
        return F.normalize(rows, dim=1) if self.metric == "cosine" else rows


@torch.no_grad()
def _plain_blocks(query, gallery, chunk_size):
    for start in range(0, len(query), chunk_size):
        rows = slice(start, min(start + chunk_size, len(query)))
        yield start, _distance_block(query, rows, gallery, slice(0, len(gallery)))


def _distance_block(left, rows, right, columns, squared=False):
    """(rows, columns) float32 distances (or ``squared`` distances) between rows of ``left`` and ``right``
    (``_Features``, same metric)."""
    left_rows = left.rows(rows)
    left_norms = None if left.squared_norms is None else left.squared_norms[rows]
    tile_starts = range(columns.start, columns.stop, right.tile_rows)
    if len(tile_starts) <= 1:
        return _tile_distances(left_rows, left_norms, right, columns, squared)
    block = torch.empty(len(left_rows), columns.stop - columns.start, dtype=torch.float32, device=left.device)
    for start in tile_starts:
        tile = slice(start, min(start + right.tile_rows, columns.stop))
        block[:, start - columns.start:tile.stop - columns.start] = _tile_distances(left_rows, left_norms, right,
                                                                                    tile, squared)
    return block


def _tile_distances(left_rows, left_norms, right, columns, squared):
    dot = left_rows @ right.rows(columns).T
    if right.metric == "cosine":
        return _from_dot(dot, None, None, "cosine", squared)
    return _from_dot(dot, left_norms[:, None], right.squared_norms[columns], "euclidean", squared)


def _from_dot(dot, left_norms, right_norms, metric, squared):
    """Distances (or ``squared`` distances) from dot products, overwriting ``dot``: 1 - dot for the cosine metric
    (unit rows), else sqrt(max(|l|^2 + |r|^2 - 2 dot, 0)) from the squared norms."""
    if metric == "cosine":
        distances = dot.neg_().add_(1)
        return distances.pow_(2) if squared else distances
    distances = (left_norms + right_norms).sub_(dot.mul_(2)).clamp_min_(0)
    return distances if squared else distances.sqrt_()


def _features_on_device(query_features, gallery_features, device):
    query = torch.as_tensor(query_features)
    device = query.device if device is None else torch.device(device)
    return query.to(device), torch.as_tensor(gallery_features).to(device)


def _check_metric(metric):
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric {metric!r}; expected 'euclidean' or 'cosine'")


def _kept(blocks, distances):
    """Pass ``blocks`` through, copying each into the (Q, G) tensor ``distances``."""
    for start, block in blocks:
        distances[start:start + len(block)] = block
        yield start, block


def _matrix_blocks(distmat):
    """A given (Q, G) matrix as (start, rows) blocks of about ``_MATRIX_BLOCK_ELEMENTS`` distances."""
    num_query, num_gallery = np.shape(distmat)
    step = max(1, _MATRIX_BLOCK_ELEMENTS // max(1, num_gallery))
    for start in range(0, num_query, step):
        yield start, distmat[start:start + step]


# k-reciprocal re-ranking ----------------------------------------------------------------------------------------

class _FeatureDistances:
    """The joint items (queries, then gallery) of ``re_ranked_blocks``: squared distances from the features
    (``_Features``), which are not copied."""

    def __init__(self, query, gallery):
        self.parts, self.metric = (query, gallery), query.metric
        self.num_query, self.num_all = len(query), len(query) + len(gallery)
        self.device = query.device
        self.squared_norms = None
        if self.metric == "euclidean":
            self.squared_norms = torch.cat([query.squared_norms, gallery.squared_norms])

    def squared_block(self, rows, columns):
        return _joint_block(lambda row_half, row_part, column_half, column_part: _distance_block(
            self.parts[row_half], row_part, self.parts[column_half], column_part, squared=True),
            rows, columns, self.num_query, self.device)

    def squared_pairs(self, first, second):
        """Squared distances between items ``first[i]`` and ``second[i]``, as in ``squared_block``, gathering
        ``_PAIR_ELEMENTS`` feature values at a time."""
        distances = torch.empty(len(first), dtype=torch.float32, device=self.device)
        step = max(1, _PAIR_ELEMENTS // max(1, self.parts[0].features.shape[1]))
        for start in range(0, len(first), step):
            a, b = first[start:start + step], second[start:start + step]
            dot = (self.rows(a) * self.rows(b)).sum(dim=1)
            norms = (None, None) if self.squared_norms is None else (self.squared_norms[a], self.squared_norms[b])
            distances[start:start + step] = _from_dot(dot, *norms, self.metric, squared=True)
        return distances

    def rows(self, items):
        """float32 feature rows of the joint items ``items`` (an index tensor)."""
        in_gallery = items >= self.num_query
        rows = torch.empty(len(items), self.parts[0].features.shape[1], dtype=torch.float32, device=self.device)
        rows[~in_gallery] = self.parts[0].rows(items[~in_gallery])
        rows[in_gallery] = self.parts[1].rows(items[in_gallery] - self.num_query)
        return rows


class _MatrixDistances:
    """The joint items of ``re_rank``'s three matrices. Item i's distances are the i-th column of
    [[q_q, q_g], [q_g^T, g_g]], as in the reference implementation (for symmetric matrices, its i-th row)."""

    def __init__(self, q_g, q_q, g_g):
        self.num_query, self.num_all = q_g.shape[0], sum(q_g.shape)
        self.device = q_g.device
        self.quadrants = ((q_q.T, q_g), (q_g.T, g_g.T))

    def squared_block(self, rows, columns):
        return _joint_block(lambda row_half, row_part, column_half, column_part:
                            self.quadrants[row_half][column_half][row_part, column_part].pow(2),
                            rows, columns, self.num_query, self.device)

    def squared_pairs(self, first, second):
        distances = torch.empty(len(first), dtype=torch.float32, device=self.device)
        first_half, second_half = first >= self.num_query, second >= self.num_query
        for row_half in (0, 1):
            for column_half in (0, 1):
                selected = (first_half == row_half) & (second_half == column_half)
                distances[selected] = self.quadrants[row_half][column_half][
                    first[selected] - row_half * self.num_query, second[selected] - column_half * self.num_query]
        return distances.pow_(2)


def _joint_block(quadrant_block, rows, columns, num_query, device):
    """The (rows, columns) block (slices) of a joint matrix whose quadrants split at ``num_query``, from
    ``quadrant_block(row_half, row_part, column_half, column_part)`` (halves 0 or 1, parts local slices)."""
    row_parts, column_parts = _halves(rows, num_query), _halves(columns, num_query)
    if len(row_parts) == len(column_parts) == 1:
        return quadrant_block(*row_parts[0], *column_parts[0])
    block = torch.empty(rows.stop - rows.start, columns.stop - columns.start, dtype=torch.float32, device=device)
    for row_half, row_part in row_parts:
        for column_half, column_part in column_parts:
            first_row = row_half * num_query + row_part.start - rows.start
            first_column = column_half * num_query + column_part.start - columns.start
            block[first_row:first_row + row_part.stop - row_part.start,
                  first_column:first_column + column_part.stop - column_part.start] = quadrant_block(
                row_half, row_part, column_half, column_part)
    return block


def _halves(span, boundary):
    """[(0, local slice), (1, local slice)]: the parts of the slice ``span`` before and after ``boundary``."""
    parts = []
    if span.start < boundary:
        parts.append((0, slice(span.start, min(span.stop, boundary))))
    if span.stop > boundary:
        parts.append((1, slice(max(span.start, boundary) - boundary, span.stop - boundary)))
    return parts


@torch.no_grad()
def _re_ranked(distances, k1, k2, lambda_value, chunk_size):
    """Yield (start, (n, G) re-ranked distances) for a joint distance source (``_FeatureDistances`` or
    ``_MatrixDistances``): neighbours, then sparse weights, then Jaccard distances, each ``chunk_size`` rows at
    a time. ``original`` is the reference's normalised squared distance d(i, j)^2 / max_a d(i, a)^2."""
    num_query, num_all = distances.num_query, distances.num_all
    neighbours, squared_max = _nearest_neighbours(distances, min(max(k1 + 1, k2), num_all), chunk_size)
    weights = _k_reciprocal_weights(distances, neighbours, squared_max, k1, chunk_size)
    if k2 != 1:
        weights = _expand_queries(weights, neighbours[:, :k2], chunk_size)
    jaccard = _JaccardDistance(weights, num_query, num_all)
    for start in range(0, num_query, chunk_size):
        rows = slice(start, min(start + chunk_size, num_query))
        original = distances.squared_block(rows, slice(num_query, num_all)).div_(squared_max[rows, None])
        yield start, jaccard.rows(rows).mul_(1 - lambda_value).add_(original, alpha=lambda_value)


def _nearest_neighbours(distances, count, chunk_size):
    """Each item's ``count`` nearest items by ``original`` distance (itself first unless tied), ties by index,
    and its largest squared distance."""
    neighbours = torch.empty(distances.num_all, count, dtype=torch.long, device=distances.device)
    squared_max = torch.empty(distances.num_all, dtype=torch.float32, device=distances.device)
    for start in range(0, distances.num_all, chunk_size):
        rows = slice(start, min(start + chunk_size, distances.num_all))
        original = distances.squared_block(rows, slice(0, distances.num_all))
        squared_max[rows] = original.amax(dim=1)
        neighbours[rows] = _smallest_by_index(original.div_(squared_max[rows, None]), count)
    return neighbours, squared_max


def _smallest_by_index(values, count):
    """Columns of each row's ``count`` smallest values, in the order of a stable sort of the row."""
    smallest = torch.topk(values, min(count + 1, values.shape[1]), dim=1, largest=False, sorted=True)
    columns = smallest.indices[:, :count]
    if count < values.shape[1]:
        tied_rows = torch.nonzero(smallest.values[:, count] == smallest.values[:, count - 1]).flatten()
        if len(tied_rows):
            columns[tied_rows] = _lowest_columns(values[tied_rows], smallest.values[tied_rows, count - 1:count],
                                                 count)
    columns = columns.sort(dim=1).values
    return columns.gather(1, values.gather(1, columns).sort(dim=1, stable=True).indices)


def _lowest_columns(values, boundary, count):
    """For rows whose ``count``-th smallest value ``boundary`` is tied beyond it: the columns of the values below
    it and of the lowest-indexed values equal to it, ``count`` in all, in column order."""
    below, at = values < boundary, values == boundary
    places_left = count - below.sum(dim=1, keepdim=True)
    return torch.nonzero(below | (at & (at.cumsum(dim=1) <= places_left)))[:, 1].view(len(values), count)


def _k_reciprocal_weights(distances, neighbours, squared_max, k1, chunk_size):
    """Row i: exp(-original distance) over i's expanded k-reciprocal set, normalised to sum 1.

    Sparse (N, N) matrices are (rows, columns, values) triples here, sorted by row, then column.
    """
    num_all = len(neighbours)
    reciprocal = neighbours[:, :k1 + 1]
    half = neighbours[:, :int(round(k1 / 2)) + 1]
    is_reciprocal, is_half = _reciprocal_mask(reciprocal, chunk_size), _reciprocal_mask(half, chunk_size)
    members = torch.cat([_expanded_sets(reciprocal, is_reciprocal, half, is_half, start, chunk_size)
                         for start in range(0, num_all, chunk_size)])
    rows, columns = members // num_all, members % num_all
    values = torch.exp(-(distances.squared_pairs(rows, columns) / squared_max[rows]))
    values /= torch.zeros(num_all, dtype=values.dtype, device=values.device).index_add_(0, rows, values)[rows]
    return rows, columns, values


def _expanded_sets(reciprocal, is_reciprocal, half, is_half, start, chunk_size):
    """Sorted keys row * N + column of the expanded k-reciprocal sets of rows start .. start + chunk_size - 1.

    A reciprocal neighbour c of i adds c's half-size reciprocal set when more than 2/3 of that set is reciprocal
    to i. Membership in i's reciprocal set is looked up by binary search in the set, sorted.
    """
    num_all = len(reciprocal)
    own, is_own = reciprocal[start:start + chunk_size], is_reciprocal[start:start + chunk_size]
    row_ids = torch.arange(start, start + len(own), device=own.device)
    own_sorted = own.masked_fill(~is_own, -1).sort(dim=1).values
    candidate_sets = half[own]
    candidate_valid = is_half[own] & is_own[:, :, None]
    flat_candidates = candidate_sets.reshape(len(own), -1)
    positions = torch.searchsorted(own_sorted, flat_candidates).clamp_max_(own.shape[1] - 1)
    in_own = (own_sorted.gather(1, positions) == flat_candidates).view(candidate_sets.shape)
    shared_count = (in_own & candidate_valid).sum(dim=2)
    expands = is_own & (shared_count > 2.0 / 3.0 * candidate_valid.sum(dim=2))
    added = candidate_valid & expands[:, :, None]
    return torch.unique(torch.cat([
        row_ids[torch.nonzero(is_own, as_tuple=True)[0]] * num_all + own[is_own],
        row_ids[torch.nonzero(added, as_tuple=True)[0]] * num_all + candidate_sets[added]]))


def _reciprocal_mask(forward, chunk_size):
    """mask[i, t]: i is among the neighbours ``forward[j]`` of its own neighbour j = forward[i, t]."""
    mask = torch.empty(forward.shape, dtype=torch.bool, device=forward.device)
    for start in range(0, len(forward), chunk_size):
        rows = forward[start:start + chunk_size]
        own_index = torch.arange(start, start + len(rows), device=forward.device)[:, None, None]
        mask[start:start + len(rows)] = (forward[rows] == own_index).any(dim=2)
    return mask


def _expand_queries(weights, neighbours, chunk_size):
    """Row i becomes the mean of the rows of i's nearest ``neighbours`` (sparse triples in and out)."""
    rows, columns, values = weights
    num_all, count = neighbours.shape
    row_sizes = torch.bincount(rows, minlength=num_all)
    row_starts = torch.cumsum(row_sizes, dim=0) - row_sizes
    parts = []
    for start in range(0, num_all, chunk_size):
        sources = neighbours[start:start + chunk_size].reshape(-1)
        segment, entry = _segment_positions(row_starts[sources], row_sizes[sources])
        keys, slots = torch.unique((start + segment // count) * num_all + columns[entry], return_inverse=True)
        sums = torch.zeros(len(keys), dtype=values.dtype, device=values.device).index_add_(0, slots, values[entry])
        parts.append((keys // num_all, keys % num_all, sums / count))
    return tuple(torch.cat(part) for part in zip(*parts))


class _JaccardDistance:
    """1 - s / (2 - s) with s = sum_k min(weights[q, k], weights[g, k]), for queries q (the first ``num_query``
    rows) against the gallery rows g: only pairs of entries sharing a column k contribute, so they are
    enumerated, through an index of the gallery rows' entries by column."""

    def __init__(self, weights, num_query, num_all):
        rows, columns, values = weights
        self.weights, self.num_query, self.num_gallery = weights, num_query, num_all - num_query
        self.query_bounds = torch.searchsorted(rows, torch.arange(num_query + 1, device=rows.device)).tolist()
        in_gallery = rows >= num_query
        gallery_rows, gallery_columns = rows[in_gallery] - num_query, columns[in_gallery]
        by_column = torch.argsort(gallery_columns * num_all + gallery_rows)
        self.column_rows, self.column_values = gallery_rows[by_column], values[in_gallery][by_column]
        self.column_sizes = torch.bincount(gallery_columns, minlength=num_all)
        self.column_starts = torch.cumsum(self.column_sizes, dim=0) - self.column_sizes

    def rows(self, queries):
        """(n, G) Jaccard distances of the queries in the slice ``queries``."""
        rows, columns, values = self.weights
        entries = slice(self.query_bounds[queries.start], self.query_bounds[queries.stop])
        query_rows, query_columns, query_values = rows[entries] - queries.start, columns[entries], values[entries]
        pair, partner = _segment_positions(self.column_starts[query_columns], self.column_sizes[query_columns])
        overlap = torch.minimum(query_values[pair], self.column_values[partner])
        num_rows = queries.stop - queries.start
        shared = torch.zeros(num_rows * self.num_gallery, dtype=values.dtype, device=values.device)
        shared.index_add_(0, query_rows[pair] * self.num_gallery + self.column_rows[partner], overlap)
        shared = shared.view(num_rows, self.num_gallery)
        return shared.div_(2 - shared).neg_().add_(1)


def _segment_positions(starts, sizes):
    """Every position of the segments [starts[s], starts[s] + sizes[s]), with its segment s."""
    segment = torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes)
    offset = torch.arange(len(segment), device=sizes.device) - (torch.cumsum(sizes, dim=0) - sizes)[segment]
    return segment, starts[segment] + offset


# Ranking --------------------------------------------------------------------------------------------------------

def _rank_blocks(blocks, shape, q_pids, g_pids, q_camids, g_camids, single_shot_topk=None, seed=0):
    """Consume (start, rows) distance blocks that cover the queries in order: every valid query's correct-match
    ranks (``_MatchRanks``) and, with ``single_shot_topk``, the cuhk03 view's counts (``_OtherCameraSingleShot``).

    The rows of a block are ranked ``_RANKING_ELEMENTS`` distances at a time by ``torch.get_num_threads()``
    threads (numpy releases the GIL in the heavy steps), the cuhk03 view in one more task.
    """
    q_pids, g_pids, q_camids, g_camids = _labels(shape, q_pids, g_pids, q_camids, g_camids)
    num_query, num_gallery = shape
    match_ranks = _MatchRanks(num_query, num_gallery)
    single_shot = None
    if single_shot_topk is not None:
        single_shot = _OtherCameraSingleShot(q_pids, g_pids, q_camids, g_camids, single_shot_topk, seed)
    if num_gallery == 0:
        return match_ranks, single_shot
    rank_rows = partial(_match_ranks_of_rows, groups=_gallery_groups(g_pids), g_camids=g_camids, q_pids=q_pids,
                        q_camids=q_camids, index_bits=max(1, (num_gallery - 1).bit_length()))
    step = _ranking_rows(num_gallery)
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        for start, block in blocks:
            rows = _rows_as_numpy(block)
            counting = pool.submit(single_shot.add, start, rows) if single_shot is not None else None
            offsets = range(0, len(rows), step)
            for ranked in pool.map(lambda offset: rank_rows(rows[offset:offset + step], start + offset), offsets):
                match_ranks.add(*ranked)
            if counting is not None:
                counting.result()
    return match_ranks, single_shot


def _match_ranks_of_rows(rows, start, groups, g_camids, q_pids, q_camids, index_bits):
    """(valid query indices, their ranks, their numbers of correct matches) for the distance rows of queries
    start .. start + len(rows) - 1 (see ``_ranks_in_chunk``)."""
    queries = slice(start, start + len(rows))
    entries, is_match, is_ignored = _same_id_entries(groups, g_camids, q_pids[queries], q_camids[queries])
    valid = is_match.any(axis=1)
    if not valid.all():
        rows, entries, is_match, is_ignored = rows[valid], entries[valid], is_match[valid], is_ignored[valid]
    if len(rows) == 0:
        return np.empty(0, dtype=np.int64), np.empty((0, 1), dtype=np.int64), np.empty(0, dtype=np.int64)
    ranks, num_matches = _ranks_in_chunk(rows, entries, is_match, is_ignored, index_bits)
    return start + np.flatnonzero(valid), ranks, num_matches


def _ranking_rows(num_gallery):
    """Queries ranked per step: ``_RANKING_ELEMENTS`` distances, and few enough for ``_ranks_in_chunk``'s
    packed keys."""
    index_bits = max(1, (num_gallery - 1).bit_length())
    return max(1, min(_RANKING_ELEMENTS // max(1, num_gallery), 1 << (31 - index_bits)))


class _MatchRanks:
    """Every valid query's correct-match ranks, in query order, as one flat array: O(number of matches)."""

    def __init__(self, num_query, num_gallery):
        self.num_query, self.num_gallery = num_query, num_gallery
        self.queries, self.num_matches, self.ranks = [], [], []

    def add(self, queries, ranks, num_matches):
        self.queries.append(queries)
        self.num_matches.append(num_matches)
        self.ranks.append(ranks[np.arange(ranks.shape[1]) < num_matches[:, None]])

    def groups(self):
        """Yield (ranks, num_matches) for the valid queries of each group of ``_ranking_rows`` consecutive
        queries, ``ranks`` padded with zeros to the group's largest number of matches.

        The sums over queries are made group by group in this fixed grouping, so that they do not depend on how
        the distances were blocked.
        """
        queries = np.concatenate(self.queries or [np.empty(0, dtype=np.int64)])
        num_matches = np.concatenate(self.num_matches or [np.empty(0, dtype=np.int64)])
        ranks = np.concatenate(self.ranks or [np.empty(0, dtype=np.int64)])
        match_starts = np.concatenate([[0], np.cumsum(num_matches)])
        group_starts = np.arange(0, self.num_query, _ranking_rows(self.num_gallery))
        bounds = np.searchsorted(queries, np.append(group_starts, self.num_query))
        for first, stop in zip(bounds[:-1], bounds[1:]):
            if first == stop:
                continue
            counts = num_matches[first:stop]
            in_list = np.arange(counts.max()) < counts[:, None]
            padded = np.zeros(in_list.shape, dtype=np.int64)
            padded[in_list] = ranks[match_starts[first]:match_starts[stop]]
            yield padded, counts


def _rank_metrics(match_ranks, max_rank):
    """``evaluate_rank``'s result from the queries' correct-match ranks."""
    first_match_hits = np.zeros(max_rank, dtype=np.int64)
    ap_sum = inp_sum = 0.0
    num_valid = 0
    for ranks, num_matches in match_ranks.groups():
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


def _cmc_views(match_ranks, single_shot, topk):
    """``cmc_views``' result from the queries' correct-match ranks and the cuhk03 view's counts."""
    market_hits = np.zeros(topk, dtype=np.int64)
    allshots_hits = np.zeros(topk)
    num_valid = 0
    for ranks, num_matches in match_ranks.groups():
        market_hits += _count_below(ranks[:, 0], topk)
        match_order = np.arange(ranks.shape[1])
        wrong_before = ranks - match_order
        counted = (match_order < num_matches[:, None]) & (wrong_before < topk)
        weights = np.broadcast_to(1.0 / num_matches[:, None], ranks.shape)
        allshots_hits += np.bincount(wrong_before[counted], weights=weights[counted], minlength=topk)
        num_valid += len(ranks)
    _require_valid_queries(num_valid)
    return {"allshots": np.cumsum(allshots_hits) / num_valid, "cuhk03": single_shot.curve(),
            "market1501": np.cumsum(market_hits) / num_valid}


class _OtherCameraSingleShot:
    """open-reid's cuhk03 CMC, fed distance rows in query order (see ``cmc_views``).

    The draws follow the original single-pass code exactly: one generator, query cameras in sorted order, each
    camera's valid queries in chunks of ``_SINGLE_SHOT_ELEMENTS // (number of ids)``, ``repeats`` draws per
    chunk. To make them while the rows arrive in query order instead, the generator's state at each camera's
    first draw is found beforehand (by making the earlier cameras' draws once), each camera then draws from its
    own copy, and the integer counts are added up in the original order at the end: the same curve, bit for bit.
    """

    def __init__(self, q_pids, g_pids, q_camids, g_camids, topk, seed, repeats=10):
        self.topk = topk
        rng = np.random.default_rng(seed)
        self.cameras = []
        for camera in np.unique(q_camids):
            if np.any(g_camids != camera):
                self.cameras.append(_CameraDraws(camera, q_pids, g_pids, q_camids, g_camids, topk, repeats,
                                                 rng.bit_generator.state))
                self.cameras[-1].skip_draws(rng)

    def add(self, start, rows):
        """Count the draws of queries start .. start + len(rows) - 1, whose (n, G) distances are ``rows``."""
        for camera in self.cameras:
            camera.add(start, rows)

    def curve(self):
        hits = np.zeros(self.topk)
        for camera in self.cameras:
            for chunk_counts in camera.counts:
                for repeat_counts in chunk_counts:
                    hits += repeat_counts / camera.repeats
        num_valid = sum(len(camera.queries) for camera in self.cameras)
        _require_valid_queries(num_valid)
        return np.cumsum(hits) / num_valid


class _CameraDraws:
    """One query camera's part of the cuhk03 view: its queries with a correct match, the gallery entries of the
    other cameras grouped by id, its own generator (starting from ``state``), and integer counts per
    (chunk, repeat, rank)."""

    def __init__(self, camera, q_pids, g_pids, q_camids, g_camids, topk, repeats, state):
        other_cameras = np.flatnonzero(g_camids != camera)
        order, self.ids, self.starts, self.sizes = _gallery_groups(g_pids[other_cameras])
        self.order = other_cameras[order].astype(np.int32 if len(g_camids) < 2 ** 31 else np.int64)
        queries = np.flatnonzero(q_camids == camera)
        slots = np.minimum(np.searchsorted(self.ids, q_pids[queries]), len(self.ids) - 1)
        has_match = self.ids[slots] == q_pids[queries]
        self.queries, self.slots = queries[has_match], slots[has_match]
        self.chunk_rows = max(1, _SINGLE_SHOT_ELEMENTS // len(self.ids))
        self.repeats, self.topk = repeats, topk
        self.counts = np.zeros((-(-len(self.queries) // self.chunk_rows), repeats, topk), dtype=np.int64)
        self.generator = np.random.Generator(np.random.PCG64())
        self.generator.bit_generator.state = state
        self.open_chunk, self.open_draws = -1, None

    def draw_offsets(self, chunk, generator):
        """Yield, per repeat, each query's draw of one entry per id in ``chunk``: offsets within the id's group."""
        num_rows = len(self.queries[chunk * self.chunk_rows:(chunk + 1) * self.chunk_rows])
        for _ in range(self.repeats):
            yield generator.integers(0, self.sizes, size=(num_rows, len(self.ids)))

    def skip_draws(self, generator):
        """Advance ``generator`` past this camera's draws."""
        for chunk in range(len(self.counts)):
            for _ in self.draw_offsets(chunk, generator):
                pass

    def add(self, start, rows):
        first, stop = np.searchsorted(self.queries, [start, start + len(rows)])
        if first == stop:
            return
        for chunk in range(first // self.chunk_rows, -(-stop // self.chunk_rows)):
            if chunk != self.open_chunk:
                self.open_chunk = chunk
                self.open_draws = np.stack([self.order[self.starts + offsets]
                                            for offsets in self.draw_offsets(chunk, self.generator)])
            chunk_start = chunk * self.chunk_rows
            part = slice(max(first, chunk_start), min(stop, chunk_start + self.chunk_rows))
            drawn = self.open_draws[:, part.start - chunk_start:part.stop - chunk_start]
            self.count(chunk, rows[self.queries[part] - start], drawn, self.slots[part])
            if part.stop == min(chunk_start + self.chunk_rows, len(self.queries)):
                self.open_draws = None

    def count(self, chunk, rows, drawn, slots):
        """Add, per repeat, the histogram of the drawn correct match's rank among the drawn entries."""
        row_index = np.arange(len(rows))
        for repeat in range(self.repeats):
            drawn_distances = rows[row_index[:, None], drawn[repeat]]
            match = drawn[repeat][row_index, slots][:, None]
            match_distance = drawn_distances[row_index, slots][:, None]
            before = ((drawn_distances < match_distance)
                      | ((drawn_distances == match_distance) & (drawn[repeat] < match)))
            self.counts[chunk, repeat] += _count_below(before.sum(axis=1), self.topk)


def _labels(shape, q_pids, g_pids, q_camids, g_camids):
    """The four label arrays as numpy arrays, checked against the (Q, G) ``shape`` of the distances."""
    q_pids, g_pids, q_camids, g_camids = (_as_numpy(labels) for labels in (q_pids, g_pids, q_camids, g_camids))
    num_query, num_gallery = shape
    if (len(q_pids), len(q_camids), len(g_pids), len(g_camids)) != (num_query, num_query, num_gallery, num_gallery):
        raise ValueError(f"the distances have shape {tuple(shape)} but there are {len(q_pids)} query ids, "
                         f"{len(q_camids)} query cameras, {len(g_pids)} gallery ids, {len(g_camids)} gallery cameras")
    return q_pids, g_pids, q_camids, g_camids


def _ranks_in_chunk(rows, entries, is_match, is_ignored, index_bits):
    """Correct-match ranks for one chunk of (C, G) distances, every row with at least one correct match.

    ranks[i, j] is the 0-based rank of query i's (j+1)-th correct match among its non-ignored gallery entries,
    in the stable order by distance; columns j >= num_matches[i] are padding.

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


def _rows_as_numpy(rows):
    """Distance rows (a tensor or an array) as a numpy array; float32/float64 CPU rows are not copied."""
    if not torch.is_tensor(rows):
        return np.asarray(rows)
    rows = rows.detach()
    if rows.dtype not in (torch.float32, torch.float64):
        rows = rows.float()
    return rows.cpu().numpy()


def _as_numpy(values):
    return values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)


def _count_below(values, length):
    """Histogram of ``values`` over 0 .. length - 1 (larger values are dropped)."""
    return np.bincount(values[values < length], minlength=length)[:length]


def _require_valid_queries(num_valid):
    if num_valid == 0:
        raise ValueError("no query has a correct match in the gallery (an entry with the query's id from another "
                         "camera), so CMC and mAP are undefined")
