"""Ranking: CMC, mAP and mINP (``evaluate_rank``), open-reid's three CMC views (``cmc_views``), and both from
a stream of distance blocks (``evaluate_blocks``).

Ranking protocol: for a query, gallery entries with the query's id and camera are ignored, and so are the
query's ``self_matches`` (gallery entries that are the query image itself, whatever their id and camera); the
correct matches are the remaining entries with the query's id. Ties in distance are ordered as a stable sort by
distance would order them (by gallery index), so every function here is deterministic. The metrics do not
depend on the block size: each valid query's correct-match ranks are exact integers, and the sums over queries
are made afterwards in fixed groups of queries.
"""
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

_RANKING_ELEMENTS = 1 << 21  # distances ranked per step; also sets the groups of queries the sums are made over
_SINGLE_SHOT_ELEMENTS = 1 << 18  # entries drawn per step of the cuhk03 view; sets its random stream
_MATRIX_BLOCK_ELEMENTS = 1 << 24  # rows of a given distance matrix handed to the ranking at a time


def evaluate_blocks(blocks, shape, q_pids, g_pids, q_camids, g_camids, self_matches=None):
    """``retrieval_metrics``' results (``distances`` aside) from (start, rows) blocks of a (Q, G) = ``shape``
    distance matrix that cover the queries in order, as ``distance_blocks`` and ``re_ranked_blocks`` yield them.
    Each block is ranked, then dropped. ``self_matches``: see ``evaluate_rank``."""
    match_ranks, single_shot = _rank_blocks(blocks, shape, q_pids, g_pids, q_camids, g_camids, self_matches,
                                            single_shot_topk=10, seed=0)
    ranking = _rank_metrics(match_ranks, max_rank=10)
    views = _cmc_views(match_ranks, single_shot, topk=10)
    return {"rank1": float(ranking["cmc"][0]), "rank5": float(ranking["cmc"][4]),
            "rank10": float(ranking["cmc"][9]), "mAP": float(ranking["mAP"]), "mINP": float(ranking["mINP"]),
            "num_valid_queries": int(ranking["num_valid_queries"]),
            "cmc_views": {name: [float(v) for v in cmc] for name, cmc in views.items()},
            "per_query": ranking["per_query"]}


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, self_matches=None):
    """CMC (``max_rank`` fractions), mAP and mINP of a (Q, G) distance matrix (numpy array or torch tensor), and
    ``per_query``: the valid queries' figures, in query order, as numpy arrays ``query_index`` (int64),
    ``ap`` (float64), ``first_match_rank`` (int64, 1 for a correct match ranked first) and ``inp`` (float64).

    Queries without any correct match are skipped; ``num_valid_queries`` counts the others. AP is the mean, over
    a query's correct matches, of the precision at each match's rank; INP is the number of correct matches over
    the rank of the last one. ``self_matches``, a pair (query indices, gallery indices), names gallery entries
    that are the query image itself: each is ignored for its query, like a same-camera match. Raises ValueError
    if no query has a correct match.
    """
    match_ranks, _ = _rank_blocks(_matrix_blocks(distmat), np.shape(distmat), q_pids, g_pids, q_camids, g_camids,
                                  self_matches)
    return _rank_metrics(match_ranks, max_rank)


def cmc_views(distmat, q_pids, g_pids, q_camids, g_camids, topk=10, seed=0, self_matches=None):
    """open-reid's three CMC curves (``topk`` fractions each) for its printed table.

    - ``market1501``: the standard CMC (the first correct match counts), equal to ``evaluate_rank``'s.
    - ``allshots``: every correct match of a query counts, with weight 1 / (its number of correct matches), at
      the number of wrong (non-ignored) entries ranked before it.
    - ``cuhk03``: only gallery cameras other than the query's; one entry per gallery id is drawn at random (10
      draws from ``np.random.default_rng(seed)``, each weighing 1/10) and the drawn correct match counts at its
      rank among the drawn entries.
    A query's ``self_matches`` (see ``evaluate_rank``) are left out of all three. Raises ValueError if no query
    has a correct match.
    """
    match_ranks, single_shot = _rank_blocks(_matrix_blocks(distmat), np.shape(distmat), q_pids, g_pids, q_camids,
                                            g_camids, self_matches, single_shot_topk=topk, seed=seed)
    return _cmc_views(match_ranks, single_shot, topk)


def _matrix_blocks(distmat):
    """A given (Q, G) matrix as (start, rows) blocks of about ``_MATRIX_BLOCK_ELEMENTS`` distances."""
    num_query, num_gallery = np.shape(distmat)
    step = max(1, _MATRIX_BLOCK_ELEMENTS // max(1, num_gallery))
    for start in range(0, num_query, step):
        yield start, distmat[start:start + step]


def _rank_blocks(blocks, shape, q_pids, g_pids, q_camids, g_camids, self_matches, single_shot_topk=None, seed=0):
    """Consume (start, rows) distance blocks that cover the queries in order: every valid query's correct-match
    ranks (``_MatchRanks``) and, with ``single_shot_topk``, the cuhk03 view's counts (``_OtherCameraSingleShot``).

    The rows of a block are ranked ``_RANKING_ELEMENTS`` distances at a time by ``torch.get_num_threads()``
    threads (numpy releases the GIL in the heavy steps), the cuhk03 view in one more task.
    """
    q_pids, g_pids, q_camids, g_camids = _labels(shape, q_pids, g_pids, q_camids, g_camids)
    self_matches = _self_match_pairs(self_matches, shape)
    num_query, num_gallery = shape
    match_ranks = _MatchRanks(num_query, num_gallery)
    single_shot = None
    if single_shot_topk is not None:
        single_shot = _OtherCameraSingleShot(q_pids, g_pids, q_camids, g_camids, self_matches, single_shot_topk,
                                             seed)
    if num_gallery == 0:
        return match_ranks, single_shot
    rank_rows = partial(_match_ranks_of_rows, groups=_gallery_groups(g_pids), g_camids=g_camids, q_pids=q_pids,
                        q_camids=q_camids, self_matches=self_matches,
                        index_bits=max(1, (num_gallery - 1).bit_length()))
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


def _match_ranks_of_rows(rows, start, groups, g_camids, q_pids, q_camids, self_matches, index_bits):
    """(valid query indices, their ranks, their numbers of correct matches) for the distance rows of queries
    start .. start + len(rows) - 1 (see ``_ranks_in_chunk``)."""
    queries = slice(start, start + len(rows))
    self_rows, self_columns = _pairs_of_queries(self_matches, start, start + len(rows))
    entries, is_match, is_ignored = _same_id_entries(groups, g_camids, q_pids[queries], q_camids[queries])
    hit_pairs, hit_slots = np.nonzero(entries[self_rows] == self_columns[:, None])
    is_match[self_rows[hit_pairs], hit_slots] = False
    valid = is_match.any(axis=1)
    if not valid.all():
        rows, entries, is_match, is_ignored = rows[valid], entries[valid], is_match[valid], is_ignored[valid]
        kept = valid[self_rows]
        self_rows, self_columns = (np.cumsum(valid) - 1)[self_rows[kept]], self_columns[kept]
    if len(rows) == 0:
        return np.empty(0, dtype=np.int64), np.empty((0, 1), dtype=np.int64), np.empty(0, dtype=np.int64)
    ignored_rows, ignored_slots = np.nonzero(is_ignored)
    ignored = (np.concatenate([ignored_rows, self_rows]),
               np.concatenate([entries[ignored_rows, ignored_slots], self_columns]))
    ranks, num_matches = _ranks_in_chunk(rows, entries, is_match, ignored, index_bits)
    return start + np.flatnonzero(valid), ranks, num_matches


def _self_match_pairs(self_matches, shape):
    """``self_matches`` (a pair: query indices, gallery indices) as two int64 arrays sorted by query, then gallery
    index, each pair once; a ValueError for an index outside the (Q, G) ``shape``."""
    empty = np.empty(0, dtype=np.int64)
    if self_matches is None:
        return empty, empty
    queries, gallery = (_as_numpy(indices).astype(np.int64).reshape(-1) for indices in self_matches)
    if len(queries) != len(gallery):
        raise ValueError(f"self_matches has {len(queries)} query indices but {len(gallery)} gallery indices")
    if len(queries) == 0:
        return empty, empty
    num_query, num_gallery = shape
    if queries.min() < 0 or queries.max() >= num_query or gallery.min() < 0 or gallery.max() >= num_gallery:
        raise ValueError(f"self_matches holds an index outside the {num_query} queries or {num_gallery} gallery "
                         f"entries")
    keys = np.unique(queries * num_gallery + gallery)
    return keys // num_gallery, keys % num_gallery


def _pairs_of_queries(pairs, start, stop):
    """The (query, gallery) ``pairs`` of queries start .. stop - 1, as (query - start, gallery index) arrays."""
    queries, gallery = pairs
    first, last = np.searchsorted(queries, [start, stop])
    return queries[first:last] - start, gallery[first:last]


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
        """Yield (queries, ranks, num_matches) for the valid queries of each group of ``_ranking_rows``
        consecutive queries, ``ranks`` padded with zeros to the group's largest number of matches.

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
            yield queries[first:stop], padded, counts


def _rank_metrics(match_ranks, max_rank):
    """``evaluate_rank``'s result from the queries' correct-match ranks."""
    first_match_hits = np.zeros(max_rank, dtype=np.int64)
    ap_sum = inp_sum = 0.0
    num_valid = 0
    per_query = {"query_index": [], "ap": [], "first_match_rank": [], "inp": []}
    for queries, ranks, num_matches in match_ranks.groups():
        first_match_hits += _count_below(ranks[:, 0], max_rank)
        in_list = np.arange(ranks.shape[1]) < num_matches[:, None]
        precision = np.arange(1, ranks.shape[1] + 1) / (ranks + 1)
        average_precisions = np.where(in_list, precision, 0.0).sum(axis=1) / num_matches
        ap_sum += float(average_precisions.sum())
        last_ranks = ranks[np.arange(len(ranks)), num_matches - 1]
        inverse_negative_penalties = num_matches / (last_ranks + 1)
        inp_sum += float(inverse_negative_penalties.sum())
        num_valid += len(ranks)
        per_query["query_index"].append(queries)
        per_query["ap"].append(average_precisions)
        per_query["first_match_rank"].append(ranks[:, 0] + 1)
        per_query["inp"].append(inverse_negative_penalties)
    _require_valid_queries(num_valid)
    dtypes = {"query_index": np.int64, "ap": np.float64, "first_match_rank": np.int64, "inp": np.float64}
    return {"cmc": np.cumsum(first_match_hits) / num_valid, "mAP": ap_sum / num_valid,
            "mINP": inp_sum / num_valid, "num_valid_queries": num_valid,
            "per_query": {key: np.concatenate(parts).astype(dtypes[key]) for key, parts in per_query.items()}}


def _cmc_views(match_ranks, single_shot, topk):
    """``cmc_views``' result from the queries' correct-match ranks and the cuhk03 view's counts."""
    market_hits = np.zeros(topk, dtype=np.int64)
    allshots_hits = np.zeros(topk)
    num_valid = 0
    for _, ranks, num_matches in match_ranks.groups():
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
    Self-matches only change the draws of the chunks whose queries have one (see ``_CameraDraws``).
    """

    def __init__(self, q_pids, g_pids, q_camids, g_camids, self_matches, topk, seed, repeats=10):
        self.topk = topk
        rng = np.random.default_rng(seed)
        self.cameras = []
        for camera in np.unique(q_camids):
            if np.any(g_camids != camera):
                self.cameras.append(_CameraDraws(camera, q_pids, g_pids, q_camids, g_camids, self_matches, topk,
                                                 repeats, rng.bit_generator.state))
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
    (chunk, repeat, rank).

    A query's self-matches are left out of its draws: ``left_out`` holds them as (query position in
    ``queries``, id slot, offset in the id's group), sorted. Their id's draw is made among the group's other
    entries; an id with no other entry (a self-match labelled with another id) is left out of the query's
    draws altogether (``emptied``).
    """

    def __init__(self, camera, q_pids, g_pids, q_camids, g_camids, self_matches, topk, repeats, state):
        other_cameras = np.flatnonzero(g_camids != camera)
        order, self.ids, self.starts, self.sizes = _gallery_groups(g_pids[other_cameras])
        self.order = other_cameras[order].astype(np.int32 if len(g_camids) < 2 ** 31 else np.int64)
        queries = np.flatnonzero(q_camids == camera)
        slots = np.minimum(np.searchsorted(self.ids, q_pids[queries]), len(self.ids) - 1)
        rows, left_slots, offsets = self._left_out_entries(queries, self_matches, g_camids != camera,
                                                           other_cameras[order])
        groups, num_left_out = np.unique(rows * len(self.ids) + left_slots, return_counts=True)
        group_rows, group_slots = np.divmod(groups, len(self.ids))
        emptied = num_left_out == self.sizes[group_slots]
        has_match = self.ids[slots] == q_pids[queries]
        has_match[group_rows[emptied & (group_slots == slots[group_rows])]] = False
        self.queries, self.slots = queries[has_match], slots[has_match]
        positions = np.cumsum(has_match) - 1
        kept = has_match[rows]
        self.left_out = positions[rows[kept]], left_slots[kept], offsets[kept]
        emptied &= has_match[group_rows]
        self.emptied = positions[group_rows[emptied]], group_slots[emptied]
        self.chunk_rows = max(1, _SINGLE_SHOT_ELEMENTS // len(self.ids))
        self.repeats, self.topk = repeats, topk
        self.counts = np.zeros((-(-len(self.queries) // self.chunk_rows), repeats, topk), dtype=np.int64)
        self.generator = np.random.Generator(np.random.PCG64())
        self.generator.bit_generator.state = state
        self.open_chunk, self.open_draws = -1, None

    def _left_out_entries(self, queries, self_matches, in_other_camera, grouped):
        """(position in ``queries``, id slot, offset in the id's group) of the ``self_matches`` pairs of one of
        ``queries`` and an entry of ``grouped`` (the other cameras' gallery entries in group order), sorted."""
        pair_queries, pair_gallery = self_matches
        positions = np.minimum(np.searchsorted(queries, pair_queries), len(queries) - 1)
        here = (queries[positions] == pair_queries) & in_other_camera[pair_gallery]
        if not here.any():
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, empty
        place = np.empty(len(in_other_camera), dtype=np.int64)
        place[grouped] = np.arange(len(grouped))
        places = place[pair_gallery[here]]
        slots = np.searchsorted(self.starts, places, side="right") - 1
        rows, offsets = positions[here], places - self.starts[slots]
        order = np.lexsort((offsets, slots, rows))
        return rows[order], slots[order], offsets[order]

    def draw_offsets(self, chunk, generator):
        """Yield, per repeat, each query's draw of one entry per id in ``chunk``: offsets within the id's group.

        Where a query has left-out entries, its draw is among the others: the offset is drawn below the number
        of the others, then stepped over the left-out offsets, lowest first. Emptied groups get offset 0.
        """
        first = chunk * self.chunk_rows
        num_rows = len(self.queries[first:first + self.chunk_rows])
        part = slice(*np.searchsorted(self.left_out[0], [first, first + num_rows]))
        rows, slots, offsets = (values[part] for values in self.left_out)
        rows = rows - first
        if len(rows) == 0:
            for _ in range(self.repeats):
                yield generator.integers(0, self.sizes, size=(num_rows, len(self.ids)))
            return
        sizes = np.tile(self.sizes, (num_rows, 1))
        np.subtract.at(sizes, (rows, slots), 1)
        groups = rows * len(self.ids) + slots
        steps = np.arange(len(groups)) - np.searchsorted(groups, groups)
        for _ in range(self.repeats):
            drawn = generator.integers(0, np.maximum(sizes, 1))
            for step in range(steps.max() + 1):
                at = steps == step
                drawn[rows[at], slots[at]] += drawn[rows[at], slots[at]] >= offsets[at]
            drawn[sizes == 0] = 0
            yield drawn

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
                self._drop_emptied(chunk)
            chunk_start = chunk * self.chunk_rows
            part = slice(max(first, chunk_start), min(stop, chunk_start + self.chunk_rows))
            drawn = self.open_draws[:, part.start - chunk_start:part.stop - chunk_start]
            self.count(chunk, rows[self.queries[part] - start], drawn, self.slots[part])
            if part.stop == min(chunk_start + self.chunk_rows, len(self.queries)):
                self.open_draws = None

    def _drop_emptied(self, chunk):
        """Replace the draws of the chunk's emptied groups by the query's drawn correct match, which ranks
        nothing before itself: the group then counts for nothing."""
        rows, slots = self.emptied
        first = chunk * self.chunk_rows
        in_chunk = (rows >= first) & (rows < first + self.chunk_rows)
        rows, slots = rows[in_chunk], slots[in_chunk]
        self.open_draws[:, rows - first, slots] = self.open_draws[:, rows - first, self.slots[rows]]

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


def _ranks_in_chunk(rows, entries, is_match, ignored, index_bits):
    """Correct-match ranks for one chunk of (C, G) distances, every row with at least one correct match;
    ``ignored`` = (rows, gallery indices) are the entries that do not count.

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
    candidates[ignored] = False
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
