"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) without the joint (Q + G)^2 matrix: from the features
(``re_ranked_blocks``) or from the three distance matrices (``re_rank``)."""
import torch

from .distance import _check_metric, _distance_block, _Features, _features_on_device, _from_dot

RERANK_CHUNK_SIZE = 512  # rows per step of the re-ranking (its blocks of final distances too)
_PAIR_ELEMENTS = 1 << 22  # feature values gathered per batch of single distances


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
