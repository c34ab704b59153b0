"""reid.metrics against plain, step-by-step reference implementations written here."""
import tracemalloc
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reid import metrics


def reference_rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, self_matches=()):
    """Walk each query's stably sorted gallery, skipping its same-id same-camera entries and its
    ``self_matches`` ((query, gallery) pairs)."""
    cmc_sum = np.zeros(max_rank)
    average_precisions, inverse_negative_penalties = [], []
    valid_queries, first_ranks = [], []
    for query in range(len(q_pids)):
        rank = found = 0
        first_rank = last_rank = None
        precisions = []
        for gallery in np.argsort(distmat[query], kind="stable"):
            same_id = g_pids[gallery] == q_pids[query]
            if (same_id and g_camids[gallery] == q_camids[query]) or (query, gallery) in self_matches:
                continue
            rank += 1
            if same_id:
                found += 1
                precisions.append(found / rank)
                first_rank = first_rank or rank
                last_rank = rank
        if found == 0:
            continue
        cmc_sum[first_rank - 1:] += 1
        average_precisions.append(np.mean(precisions))
        inverse_negative_penalties.append(found / last_rank)
        valid_queries.append(query)
        first_ranks.append(first_rank)
    num_valid = len(average_precisions)
    if num_valid == 0:
        return None
    return {"cmc": cmc_sum / num_valid, "mAP": np.mean(average_precisions),
            "mINP": np.mean(inverse_negative_penalties), "num_valid_queries": num_valid,
            "per_query": {"query_index": valid_queries, "ap": average_precisions, "first_match_rank": first_ranks,
                          "inp": inverse_negative_penalties}}


def reference_allshots(distmat, q_pids, g_pids, q_camids, g_camids, topk, self_matches=()):
    """open-reid's cmc() with separate_camera_set, single_gallery_shot and first_match_break all False."""
    hits = np.zeros(topk)
    num_valid = 0
    for query in range(len(q_pids)):
        order = np.argsort(distmat[query], kind="stable")
        kept = [g for g in order if not (g_pids[g] == q_pids[query] and g_camids[g] == q_camids[query])
                and (query, g) not in self_matches]
        match_positions = [position for position, g in enumerate(kept) if g_pids[g] == q_pids[query]]
        if not match_positions:
            continue
        for matches_before, position in enumerate(match_positions):
            wrong_before = position - matches_before
            if wrong_before < topk:
                hits[wrong_before] += 1 / len(match_positions)
        num_valid += 1
    return np.cumsum(hits) / num_valid


def reference_other_camera_cmc(distmat, q_pids, g_pids, q_camids, g_camids, topk):
    """open-reid's cuhk03 view when every id has at most one gallery entry, so sampling changes nothing."""
    hits = np.zeros(topk)
    num_valid = 0
    for query in range(len(q_pids)):
        order = np.argsort(distmat[query], kind="stable")
        kept = [g for g in order if g_camids[g] != q_camids[query]]
        match_positions = [position for position, g in enumerate(kept) if g_pids[g] == q_pids[query]]
        if not match_positions:
            continue
        if match_positions[0] < topk:
            hits[match_positions[0]] += 1
        num_valid += 1
    return np.cumsum(hits) / num_valid


def random_problem(seed, num_query=12, num_gallery=40, num_ids=6, num_cameras=3, integer_distances=False):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, num_ids, num_query)
    g_pids = rng.integers(0, num_ids + 2, num_gallery)
    q_camids = rng.integers(0, num_cameras, num_query)
    g_camids = rng.integers(0, num_cameras, num_gallery)
    if integer_distances:
        distmat = rng.integers(0, 4, (num_query, num_gallery)).astype(np.float32)
    else:
        distmat = rng.random((num_query, num_gallery), dtype=np.float32)
    return distmat, q_pids, g_pids, q_camids, g_camids


def assert_same_metrics(result, expected):
    assert result["num_valid_queries"] == expected["num_valid_queries"]
    np.testing.assert_allclose(result["cmc"], expected["cmc"], rtol=0, atol=1e-6)
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert result["mINP"] == pytest.approx(expected["mINP"], abs=1e-6)
    per_query = result["per_query"]
    for key in ("query_index", "first_match_rank"):
        assert per_query[key].dtype == np.int64
        np.testing.assert_array_equal(per_query[key], expected["per_query"][key])
    for key in ("ap", "inp"):
        assert per_query[key].dtype == np.float64
        np.testing.assert_allclose(per_query[key], expected["per_query"][key], rtol=1e-12, atol=0)
    assert_per_query_sums_to_the_summary(result["mAP"], result["mINP"], result["cmc"][0], per_query)


def assert_per_query_sums_to_the_summary(mean_ap, mean_inp, rank1, per_query):
    assert mean_ap == pytest.approx(per_query["ap"].mean(), rel=1e-12, abs=0)
    assert mean_inp == pytest.approx(per_query["inp"].mean(), rel=1e-12, abs=0)
    assert rank1 == pytest.approx(np.mean(per_query["first_match_rank"] == 1), rel=1e-12, abs=0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("integer_distances", [False, True])
def test_evaluate_rank_matches_reference(seed, integer_distances):
    problem = random_problem(seed, integer_distances=integer_distances)
    assert_same_metrics(metrics.evaluate_rank(*problem, max_rank=10),
                        reference_rank_metrics(*problem, max_rank=10))


def test_evaluate_rank_accepts_torch_tensors():
    problem = random_problem(7, num_query=30, num_gallery=80, integer_distances=True)
    tensors = [torch.from_numpy(array) for array in problem]
    assert_same_metrics(metrics.evaluate_rank(*tensors, max_rank=20), reference_rank_metrics(*problem, max_rank=20))


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.float16])
def test_evaluate_rank_other_dtypes(dtype):
    distmat, *labels = random_problem(3, num_query=20, num_gallery=60, integer_distances=True)
    distmat = (distmat * 3 - 4).astype(dtype)
    assert_same_metrics(metrics.evaluate_rank(distmat, *labels), reference_rank_metrics(distmat, *labels, 50))


def test_negative_zero_ties_with_zero():
    distmat, *labels = random_problem(5, num_query=20, num_gallery=60)
    distmat = np.choose(np.random.default_rng(0).integers(0, 4, distmat.shape),
                        np.array([-1.0, -0.0, 0.0, 1.0], dtype=np.float32)[:, None, None])
    assert_same_metrics(metrics.evaluate_rank(distmat, *labels), reference_rank_metrics(distmat, *labels, 50))


def test_many_rows_and_chunks_match_reference():
    problem = random_problem(11, num_query=300, num_gallery=500, num_ids=40, num_cameras=4, integer_distances=True)
    assert_same_metrics(metrics.evaluate_rank(*problem), reference_rank_metrics(*problem, max_rank=50))


def test_queries_without_valid_match_are_skipped():
    distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.5, 0.4, 0.6]], dtype=np.float32)
    q_pids, q_camids = np.array([1, 2, 9]), np.array([0, 0, 0])
    g_pids, g_camids = np.array([1, 2, 1]), np.array([1, 0, 2])
    result = metrics.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=3)
    assert result["num_valid_queries"] == 1
    np.testing.assert_allclose(result["cmc"], [1.0, 1.0, 1.0])
    assert result["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert result["mINP"] == pytest.approx(2 / 3)


def test_per_query_figures_of_a_hand_made_matrix():
    """Query 0: its same-camera match (gallery 2) is ignored; wrong, wrong, then correct at ranks 3 and 4.
    Query 1 has no correct match. Query 2: its only correct match is ranked first."""
    distmat = np.array([[0.5, 0.1, 0.0, 0.2, 0.9], [0.1, 0.2, 0.3, 0.4, 0.5], [0.3, 0.05, 0.4, 0.6, 0.7]])
    q_pids, q_camids = np.array([1, 9, 2]), np.array([0, 0, 0])
    g_pids, g_camids = np.array([1, 2, 1, 3, 1]), np.array([1, 1, 0, 1, 1])
    result = metrics.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=5)
    per_query = result["per_query"]
    assert set(per_query) == {"query_index", "ap", "first_match_rank", "inp"}
    np.testing.assert_array_equal(per_query["query_index"], [0, 2])
    np.testing.assert_array_equal(per_query["first_match_rank"], [3, 1])
    np.testing.assert_allclose(per_query["ap"], [(1 / 3 + 2 / 4) / 2, 1.0], rtol=1e-15)
    np.testing.assert_allclose(per_query["inp"], [2 / 4, 1.0], rtol=1e-15)
    assert result["mAP"] == pytest.approx((5 / 12 + 1) / 2, rel=1e-15)
    assert_per_query_sums_to_the_summary(result["mAP"], result["mINP"], result["cmc"][0], per_query)


def test_retrieval_metrics_report_each_valid_query_in_query_order():
    query, gallery, *labels = labelled_features(3, 150, 200, num_ids=100)
    result = metrics.retrieval_metrics(query, gallery, *labels, chunk_size=16)
    per_query = result["per_query"]
    assert len(per_query["query_index"]) == result["num_valid_queries"] < 150
    assert np.all(np.diff(per_query["query_index"]) > 0)
    assert_per_query_sums_to_the_summary(result["mAP"], result["mINP"], result["rank1"], per_query)


def test_no_valid_query_raises():
    distmat = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="no query has a correct match"):
        metrics.evaluate_rank(distmat, np.array([1, 2]), np.array([1, 2]), np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="no query has a correct match"):
        metrics.cmc_views(distmat, np.array([1, 2]), np.array([3, 4]), np.array([0, 1]), np.array([0, 1]))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        metrics.evaluate_rank(np.zeros((2, 3)), [1, 2], [1, 2], [0, 0], [1, 1])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_small_random_problems_match_reference(num_query, num_gallery, seed):
    problem = random_problem(seed, num_query, num_gallery, num_ids=3, num_cameras=2, integer_distances=True)
    expected = reference_rank_metrics(*problem, max_rank=5)
    if expected is None:
        with pytest.raises(ValueError):
            metrics.evaluate_rank(*problem, max_rank=5)
    else:
        assert_same_metrics(metrics.evaluate_rank(*problem, max_rank=5), expected)


@pytest.mark.parametrize("integer_distances", [False, True])
def test_cmc_views(integer_distances):
    problem = random_problem(2, num_query=40, num_gallery=120, integer_distances=integer_distances)
    views = metrics.cmc_views(*problem, topk=10)
    assert set(views) == {"allshots", "cuhk03", "market1501"}
    np.testing.assert_allclose(views["market1501"], metrics.evaluate_rank(*problem, max_rank=10)["cmc"], atol=1e-12)
    np.testing.assert_allclose(views["allshots"], reference_allshots(*problem, topk=10), atol=1e-12)
    for curve in views.values():
        assert curve.shape == (10,)
        assert np.all(np.diff(curve) >= 0) and 0 <= curve[0] and curve[-1] <= 1 + 1e-12
    again = metrics.cmc_views(*problem, topk=10)
    np.testing.assert_array_equal(views["cuhk03"], again["cuhk03"])


def test_cuhk03_view_with_one_entry_per_id():
    rng = np.random.default_rng(4)
    num_gallery = 50
    g_pids = rng.permutation(num_gallery)
    g_camids = rng.integers(0, 3, num_gallery)
    q_pids = rng.integers(0, num_gallery, 30)
    q_camids = rng.integers(0, 3, 30)
    distmat = rng.integers(0, 5, (30, num_gallery)).astype(np.float32)
    views = metrics.cmc_views(distmat, q_pids, g_pids, q_camids, g_camids, topk=10)
    np.testing.assert_allclose(views["cuhk03"],
                               reference_other_camera_cmc(distmat, q_pids, g_pids, q_camids, g_camids, 10), atol=1e-12)


# Self-matches: gallery entries that are the query image itself --------------------------------------------------

def test_a_query_listed_in_the_gallery_is_not_its_own_match():
    """Gallery entry 3 is query 0's own image, at distance 0: counted, rank-1 would be 3/3 instead of 2/3."""
    distmat = np.array([[0.5, 0.3, 0.4, 0.0], [0.6, 0.1, 0.7, 0.8], [0.9, 0.5, 0.2, 0.6]], dtype=np.float32)
    q_pids, q_camids = np.array([1, 2, 3]), np.array([0, 0, 0])
    g_pids, g_camids = np.array([1, 2, 3, 1]), np.array([1, 1, 1, 1])
    counted = metrics.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=4)
    assert counted["cmc"][0] == 1.0
    left_out = metrics.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=4,
                                     self_matches=([0], [3]))
    without = metrics.evaluate_rank(distmat[:, :3], q_pids, g_pids[:3], q_camids, g_camids[:3], max_rank=4)
    assert left_out["cmc"][0] == pytest.approx(2 / 3)
    np.testing.assert_array_equal(left_out["cmc"][:3], without["cmc"][:3])
    assert (left_out["mAP"], left_out["mINP"]) == (without["mAP"], without["mINP"])
    for key, values in without["per_query"].items():
        np.testing.assert_array_equal(left_out["per_query"][key], values)


@pytest.mark.parametrize("seed", range(6))
def test_self_matches_are_skipped_as_in_the_reference(seed):
    """Random self-matches, of the query's id or another, of its camera or another, some queries with several."""
    problem = random_problem(seed, num_query=30, num_gallery=90, integer_distances=seed % 2 == 1)
    rng = np.random.default_rng(seed)
    pairs = {(int(q), int(g)) for q, g in zip(rng.integers(0, 30, 40), rng.integers(0, 90, 40))}
    same_id_pairs = {(q, int(g)) for q in range(0, 30, 3) for g in np.flatnonzero(problem[2] == problem[1][q])[:1]}
    pairs |= same_id_pairs
    self_matches = tuple(np.array(sorted(pairs)).T)
    expected = reference_rank_metrics(*problem, max_rank=10, self_matches=pairs)
    assert_same_metrics(metrics.evaluate_rank(*problem, max_rank=10, self_matches=self_matches), expected)
    assert expected["mAP"] != reference_rank_metrics(*problem, max_rank=10)["mAP"]
    views = metrics.cmc_views(*problem, topk=10, self_matches=self_matches)
    np.testing.assert_allclose(views["allshots"], reference_allshots(*problem, topk=10, self_matches=pairs),
                               atol=1e-12)
    np.testing.assert_allclose(views["market1501"], expected["cmc"], atol=1e-12)


def test_streamed_evaluation_leaves_the_same_self_matches_out():
    query, gallery, *labels = labelled_features(5, 90, 300, num_ids=30)
    rng = np.random.default_rng(5)
    self_matches = (rng.integers(0, 90, 50), rng.integers(0, 300, 50))
    distances = metrics.pairwise_distance(query, gallery)
    expected = metrics_of_matrix(distances, *labels, self_matches=self_matches)
    assert expected["mAP"] != metrics_of_matrix(distances, *labels)["mAP"]
    for chunk_size in (1, 13, 4096):
        result = metrics.retrieval_metrics(query, gallery, *labels, chunk_size=chunk_size, self_matches=self_matches)
        assert_same_results(result, expected)


def test_cuhk03_view_never_draws_a_self_match():
    """Every query's real correct matches lie beyond every other entry and its self-matches at distance 0, so
    the drawn correct match ranks after one drawn entry per other id, whatever the draws, unless a self-match
    is drawn. Query 0 has two self-matches of its id; query 1 one of id 9, the only entry of that id."""
    q_pids, q_camids = np.arange(6), np.array([0, 1, 2, 0, 1, 2])
    g_pids = np.concatenate([np.repeat(np.arange(8), 3), [0, 0, 9]])
    g_camids = np.concatenate([np.tile([0, 1, 2], 8), [1, 2, 2]])
    distmat = np.random.default_rng(0).uniform(1, 2, (6, len(g_pids)))
    distmat[g_pids[None, :] == q_pids[:, None]] += 10
    distmat[0, [24, 25]] = distmat[1, 26] = 0
    self_matches = ([0, 0, 1], [24, 25, 26])
    id_9_counts = q_camids != 2
    id_9_counts[1] = False
    expected_ranks = 7 + id_9_counts
    expected = np.cumsum(np.bincount(expected_ranks, minlength=12)) / 6
    views = metrics.cmc_views(distmat, q_pids, g_pids, q_camids, g_camids, topk=12, self_matches=self_matches)
    np.testing.assert_allclose(views["cuhk03"], expected, atol=1e-12)
    counted = metrics.cmc_views(distmat, q_pids, g_pids, q_camids, g_camids, topk=12)
    assert counted["cuhk03"][0] > 0


def test_a_query_whose_only_match_is_itself_is_not_valid():
    distmat = np.array([[0.0, 0.4], [0.2, 0.1]], dtype=np.float32)
    q_pids, q_camids, g_pids, g_camids = np.array([1, 2]), np.array([0, 0]), np.array([1, 2]), np.array([1, 1])
    result = metrics.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=2, self_matches=([0], [0]))
    np.testing.assert_array_equal(result["per_query"]["query_index"], [1])
    views = metrics.cmc_views(distmat, q_pids, g_pids, q_camids, g_camids, topk=2, self_matches=([0], [0]))
    np.testing.assert_allclose(views["cuhk03"], [1.0, 1.0])
    with pytest.raises(ValueError, match="no query has a correct match"):
        metrics.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, self_matches=([0, 1], [0, 1]))


@pytest.mark.parametrize("self_matches, message", [(([0], [2]), "outside"), (([-1], [0]), "outside"),
                                                   (([0, 1], [0]), "2 query indices but 1 gallery")])
def test_bad_self_matches_are_refused(self_matches, message):
    with pytest.raises(ValueError, match=message):
        metrics.evaluate_rank(np.zeros((2, 2)), [1, 2], [1, 2], [0, 0], [1, 1], self_matches=self_matches)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_pairwise_distance(metric):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(10, 16, generator=generator)
    gallery = torch.randn(23, 16, generator=generator)
    distances = metrics.pairwise_distance(query.numpy(), gallery, metric=metric, chunk_size=3)
    if metric == "euclidean":
        expected = torch.cdist(query.double(), gallery.double())
    else:
        unit_query, unit_gallery = (torch.nn.functional.normalize(x.double()) for x in (query, gallery))
        expected = torch.cdist(unit_query, unit_gallery).pow(2) / 2
    assert distances.dtype == torch.float32 and distances.shape == (10, 23)
    torch.testing.assert_close(distances.double(), expected, rtol=0, atol=1e-5)


def test_pairwise_distance_rejects_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.pairwise_distance(torch.zeros(1, 2), torch.zeros(1, 2), metric="manhattan")


def direct_re_rank(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value):
    """The reference algorithm step by step, with loops and sets, in float64."""
    num_query = len(q_g_dist)
    squared = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]]).astype(np.float64) ** 2
    original = (squared / squared.max(axis=0)).T
    num_all = len(original)
    initial_rank = np.argsort(original, axis=1, kind="stable")

    def k_reciprocal_neighbours(i, k):
        return [j for j in initial_rank[i, :k + 1] if i in initial_rank[j, :k + 1]]

    weights = np.zeros((num_all, num_all))
    for i in range(num_all):
        reciprocal = k_reciprocal_neighbours(i, k1)
        expansion = set(reciprocal)
        for candidate in reciprocal:
            candidate_neighbours = k_reciprocal_neighbours(candidate, int(round(k1 / 2)))
            if len(set(candidate_neighbours) & set(reciprocal)) > 2 / 3 * len(candidate_neighbours):
                expansion |= set(candidate_neighbours)
        members = sorted(expansion)
        weights[i, members] = np.exp(-original[i, members]) / np.exp(-original[i, members]).sum()
    if k2 != 1:
        weights = np.stack([weights[initial_rank[i, :k2]].mean(axis=0) for i in range(num_all)])
    jaccard = np.zeros((num_query, num_all))
    for i in range(num_query):
        for j in range(num_all):
            shared = np.minimum(weights[i], weights[j]).sum()
            jaccard[i, j] = 1 - shared / (2 - shared)
    final = jaccard * (1 - lambda_value) + original[:num_query] * lambda_value
    return final[:, num_query:]


@pytest.mark.parametrize("k1, k2, lambda_value", [(20, 6, 0.3), (5, 3, 0.5), (4, 1, 0.2)])
def test_re_rank_matches_direct_implementation(k1, k2, lambda_value):
    generator = torch.Generator().manual_seed(k1)
    query = torch.randn(8, 4, generator=generator)
    gallery = torch.randn(20, 4, generator=generator)
    q_g, q_q, g_g = (metrics.pairwise_distance(a, b) for a, b in ((query, gallery), (query, query),
                                                                   (gallery, gallery)))
    expected = direct_re_rank(q_g.double().numpy(), q_q.double().numpy(), g_g.double().numpy(), k1, k2,
                              lambda_value)
    from_numpy = metrics.re_rank(q_g.numpy(), q_q.numpy(), g_g.numpy(), k1, k2, lambda_value)
    from_torch = metrics.re_rank(q_g, q_q, g_g, k1, k2, lambda_value)
    assert isinstance(from_numpy, np.ndarray) and torch.is_tensor(from_torch)
    np.testing.assert_allclose(from_numpy, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(from_torch.numpy(), expected, rtol=0, atol=1e-5)


# Bounded-memory evaluation (issue 18) ---------------------------------------------------------------------------

def labelled_features(seed, num_query, num_gallery, dim=8, num_ids=20, num_cameras=4, noise=0.8, integer=False):
    """(query features, gallery features, q_pids, g_pids, q_camids, g_camids): ids with a centre each, images
    scattered around it. ``integer`` features are small integers, so every distance is computed exactly and
    ties are frequent."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, num_ids, num_query), rng.integers(0, num_ids + 2, num_gallery)
    q_camids, g_camids = rng.integers(0, num_cameras, num_query), rng.integers(0, num_cameras, num_gallery)
    centres = torch.randn(num_ids + 2, dim, generator=generator)

    def features(pids):
        values = centres[pids] + noise * torch.randn(len(pids), dim, generator=generator)
        return (values * 2).round() if integer else values

    return features(q_pids), features(g_pids), q_pids, g_pids, q_camids, g_camids


def assert_same_results(result, expected):
    """Equal retrieval_metrics results (the distances aside), bit for bit."""
    assert {key: value for key, value in result.items() if key not in ("distances", "per_query")} == \
           {key: value for key, value in expected.items() if key not in ("distances", "per_query")}
    assert set(result["per_query"]) == set(expected["per_query"])
    for key, values in expected["per_query"].items():
        assert result["per_query"][key].dtype == values.dtype
        np.testing.assert_array_equal(result["per_query"][key], values)


def metrics_of_matrix(distances, *labels, self_matches=None):
    ranking = metrics.evaluate_rank(distances, *labels, max_rank=10, self_matches=self_matches)
    views = metrics.cmc_views(distances, *labels, topk=10, self_matches=self_matches)
    return {"rank1": float(ranking["cmc"][0]), "rank5": float(ranking["cmc"][4]),
            "rank10": float(ranking["cmc"][9]), "mAP": float(ranking["mAP"]), "mINP": float(ranking["mINP"]),
            "num_valid_queries": ranking["num_valid_queries"],
            "cmc_views": {name: [float(v) for v in curve] for name, curve in views.items()},
            "per_query": ranking["per_query"]}


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk_size", [4096, 37, 1])
def test_retrieval_metrics_equal_the_matrix_functions(metric, chunk_size):
    query, gallery, *labels = labelled_features(0, 90, 400, num_ids=30)
    result = metrics.retrieval_metrics(query, gallery, *labels, metric=metric, keep_distances=True,
                                       chunk_size=chunk_size)
    distances = metrics.pairwise_distance(query, gallery, metric=metric, chunk_size=chunk_size)
    assert torch.equal(result["distances"], distances)
    assert_same_results(result, metrics_of_matrix(distances, *labels))
    assert metrics.retrieval_metrics(query, gallery, *labels, metric=metric, chunk_size=chunk_size)["distances"] \
        is None


def test_block_sizes_do_not_change_the_metrics(monkeypatch):
    """With exact (integer) distances every way of blocking the work gives the same results, bit for bit."""
    query, gallery, *labels = labelled_features(1, 120, 500, num_ids=25, integer=True)
    expected = metrics.retrieval_metrics(query, gallery, *labels)
    for chunk_size in (1, 7, 64, 119):
        assert_same_results(metrics.retrieval_metrics(query, gallery, *labels, chunk_size=chunk_size), expected)
    distances = metrics.pairwise_distance(query, gallery)
    monkeypatch.setattr(metrics.rank, "_MATRIX_BLOCK_ELEMENTS", 3 * 500 + 17)
    assert_same_results(metrics_of_matrix(distances, *labels), expected)
    monkeypatch.setattr(metrics.distance, "_TILE_ELEMENTS", 33 * 8)
    assert_same_results(metrics.retrieval_metrics(query.half(), gallery.half(), *labels, chunk_size=9), expected)


def reference_cuhk03_view(distmat, q_pids, g_pids, q_camids, g_camids, topk, seed, chunk_elements, repeats=10):
    """The cuhk03 view as reid.metrics computed it before issue 18, camera by camera on the whole matrix."""
    rng = np.random.default_rng(seed)
    hits = np.zeros(topk)
    num_valid = 0
    for camera in np.unique(q_camids):
        other_cameras = np.flatnonzero(g_camids != camera)
        if len(other_cameras) == 0:
            continue
        order = np.argsort(g_pids[other_cameras], kind="stable")
        ids, starts, sizes = np.unique(g_pids[other_cameras][order], return_index=True, return_counts=True)
        order = other_cameras[order]
        queries = np.flatnonzero(q_camids == camera)
        slots = np.minimum(np.searchsorted(ids, q_pids[queries]), len(ids) - 1)
        has_match = ids[slots] == q_pids[queries]
        queries, slots = queries[has_match], slots[has_match]
        num_valid += len(queries)
        chunk_rows = max(1, chunk_elements // len(ids))
        for start in range(0, len(queries), chunk_rows):
            chunk, chunk_slots = queries[start:start + chunk_rows], slots[start:start + chunk_rows]
            rows, row_index = distmat[chunk], np.arange(len(chunk))
            for _ in range(repeats):
                drawn = order[starts + rng.integers(0, sizes, size=(len(chunk), len(ids)))]
                drawn_distances = rows[row_index[:, None], drawn]
                match = drawn[row_index, chunk_slots][:, None]
                match_distance = drawn_distances[row_index, chunk_slots][:, None]
                before = (drawn_distances < match_distance) | ((drawn_distances == match_distance) & (drawn < match))
                ranks = before.sum(axis=1)
                hits += np.bincount(ranks[ranks < topk], minlength=topk) / repeats
    return np.cumsum(hits) / num_valid


@pytest.mark.parametrize("integer", [False, True])
def test_streamed_cuhk03_view_equals_the_camera_by_camera_reference(monkeypatch, integer):
    """The draws are made in the reference's order although the rows arrive in query order, in blocks that
    straddle its chunks (many chunks per camera here)."""
    query, gallery, *labels = labelled_features(2, 150, 300, num_ids=40, num_cameras=5, integer=integer)
    monkeypatch.setattr(metrics.rank, "_SINGLE_SHOT_ELEMENTS", 200)
    distances = metrics.pairwise_distance(query, gallery)
    expected = reference_cuhk03_view(distances.numpy(), *labels, topk=10, seed=3, chunk_elements=200)
    for chunk_size in (150, 23, 1):
        monkeypatch.setattr(metrics.rank, "_MATRIX_BLOCK_ELEMENTS", chunk_size * 300)
        np.testing.assert_array_equal(metrics.cmc_views(distances, *labels, topk=10, seed=3)["cuhk03"], expected)


def test_float16_features_are_ranked_by_float32_distances(monkeypatch):
    query, gallery, *labels = labelled_features(3, 60, 250)
    query, gallery = query.half(), gallery.half()
    distances = metrics.pairwise_distance(query.float(), gallery.float())
    assert_same_results(metrics.retrieval_metrics(query, gallery, *labels), metrics_of_matrix(distances, *labels))
    monkeypatch.setattr(metrics.distance, "_TILE_ELEMENTS", 16 * 8)
    for metric in ("euclidean", "cosine"):
        tiled = metrics.pairwise_distance(query, gallery, metric=metric, chunk_size=13)
        torch.testing.assert_close(tiled, metrics.pairwise_distance(query.float(), gallery.float(), metric=metric),
                                   rtol=0, atol=1e-5)


def test_unknown_metric_is_refused_before_any_work():
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.distance_blocks(torch.zeros(1, 2), torch.zeros(1, 2), metric="manhattan")
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.re_ranked_blocks(torch.zeros(1, 2), torch.zeros(1, 2), metric="manhattan")


# The joint-matrix re-ranking that reid.metrics.re_rank was before issue 18, kept as the reference the bounded
# one is checked against. One change: neighbours are taken by a stable sort (ties by index) where the original
# took torch.topk's arbitrary order among ties.

def reference_re_rank(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    q_g = torch.as_tensor(q_g_dist).to(torch.float32)
    q_q = torch.as_tensor(q_q_dist).to(torch.float32)
    g_g = torch.as_tensor(g_g_dist).to(torch.float32)
    num_query = len(q_g)
    original = torch.cat([torch.cat([q_q.T, q_g], dim=1), torch.cat([q_g.T, g_g.T], dim=1)]).pow_(2)
    original.div_(original.max(dim=1, keepdim=True).values)
    count = min(max(k1 + 1, k2), len(original))
    neighbours = torch.sort(original, dim=1, stable=True).indices[:, :count]
    weights = _reference_k_reciprocal_weights(original, neighbours, k1)
    if k2 != 1:
        weights = _reference_expand_queries(weights, neighbours[:, :k2])
    jaccard = _reference_jaccard_distance(weights, num_query, len(original))
    return jaccard.mul_(1 - lambda_value).add_(original[:num_query, num_query:], alpha=lambda_value)


def _reference_k_reciprocal_weights(original, neighbours, k1):
    num_all = len(original)
    reciprocal = neighbours[:, :k1 + 1]
    is_reciprocal = _reference_reciprocal_mask(reciprocal)
    half = neighbours[:, :int(round(k1 / 2)) + 1]
    is_half = _reference_reciprocal_mask(half)
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
    values /= torch.zeros(num_all, dtype=values.dtype).index_add_(0, rows, values)[rows]
    return rows, columns, values


def _reference_reciprocal_mask(forward):
    own_index = torch.arange(len(forward))[:, None, None]
    return (forward[forward] == own_index).any(dim=2)


def _reference_expand_queries(weights, neighbours):
    rows, columns, values = weights
    num_all, count = neighbours.shape
    row_sizes = torch.bincount(rows, minlength=num_all)
    row_starts = torch.cumsum(row_sizes, dim=0) - row_sizes
    sources = neighbours.reshape(-1)
    segment, entry = _reference_segment_positions(row_starts[sources], row_sizes[sources])
    keys, slots = torch.unique((segment // count) * num_all + columns[entry], return_inverse=True)
    sums = torch.zeros(len(keys), dtype=values.dtype).index_add_(0, slots, values[entry])
    return keys // num_all, keys % num_all, sums / count


def _reference_jaccard_distance(weights, num_query, num_all, chunk_rows=256):
    rows, columns, values = weights
    by_column = torch.argsort(columns * num_all + rows)
    column_rows, column_values = rows[by_column], values[by_column]
    column_sizes = torch.bincount(columns, minlength=num_all)
    column_starts = torch.cumsum(column_sizes, dim=0) - column_sizes
    row_bounds = list(range(0, num_query, chunk_rows)) + [num_query]
    entry_bounds = torch.searchsorted(rows, torch.tensor(row_bounds)).tolist()
    jaccard = torch.empty(num_query, num_all - num_query, dtype=values.dtype)
    for chunk, (start, stop) in enumerate(zip(row_bounds[:-1], row_bounds[1:])):
        entries = slice(entry_bounds[chunk], entry_bounds[chunk + 1])
        query_rows, query_columns, query_values = rows[entries] - start, columns[entries], values[entries]
        pair, partner = _reference_segment_positions(column_starts[query_columns], column_sizes[query_columns])
        overlap = torch.minimum(query_values[pair], column_values[partner])
        shared = torch.zeros((stop - start) * num_all, dtype=values.dtype)
        shared.index_add_(0, query_rows[pair] * num_all + column_rows[partner], overlap)
        shared = shared.view(stop - start, num_all)[:, num_query:]
        jaccard[start:stop] = 1 - shared / (2 - shared)
    return jaccard


def _reference_segment_positions(starts, sizes):
    segment = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    offset = torch.arange(len(segment)) - (torch.cumsum(sizes, dim=0) - sizes)[segment]
    return segment, starts[segment] + offset


def re_ranked(query, gallery, **options):
    """re_ranked_blocks' output put together."""
    blocks = list(metrics.re_ranked_blocks(query, gallery, **options))
    assert [start for start, _ in blocks] == list(range(0, len(query), options.get("chunk_size", 512)))
    return torch.cat([block for _, block in blocks])


RE_RANK_CASES = [  # (num_query, num_gallery, k1, k2, lambda_value, chunk_size)
    (30, 90, 20, 6, 0.3, 512), (70, 260, 20, 6, 0.3, 29), (41, 150, 5, 3, 0.5, 16), (25, 120, 4, 1, 0.2, 7),
    (12, 20, 20, 6, 0.3, 5), (60, 200, 7, 8, 0.0, 61), (60, 200, 10, 6, 1.0, 1)]


@pytest.mark.parametrize("integer", [False, True], ids=["continuous", "tied"])
@pytest.mark.parametrize("num_query, num_gallery, k1, k2, lambda_value, chunk_size", RE_RANK_CASES)
def test_bounded_re_ranking_equals_the_joint_matrix_reference(num_query, num_gallery, k1, k2, lambda_value,
                                                               chunk_size, integer):
    """From the three matrices the result is the reference's; from the features, within float32 rounding of
    the distances (exact with integer features, whose distances and ties are exact)."""
    query, gallery, *labels = labelled_features(num_query + k1, num_query, num_gallery, dim=4, num_ids=15,
                                                integer=integer)
    q_g, q_q, g_g = (metrics.pairwise_distance(a, b) for a, b in ((query, gallery), (query, query),
                                                                   (gallery, gallery)))
    options = dict(k1=k1, k2=k2, lambda_value=lambda_value)
    expected = reference_re_rank(q_g, q_q, g_g, **options)
    from_matrices = metrics.re_rank(q_g, q_q, g_g, chunk_size=chunk_size, **options)
    from_features = re_ranked(query, gallery, chunk_size=chunk_size, **options)
    torch.testing.assert_close(from_matrices, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(from_features, expected, rtol=0, atol=1e-5)
    assert_same_results(metrics_of_matrix(from_features, *labels), metrics_of_matrix(expected, *labels))


def test_re_ranking_from_cosine_and_float16_features():
    query, gallery, *_ = labelled_features(5, 40, 130, dim=6)
    for metric, dtype in (("cosine", torch.float32), ("euclidean", torch.float16), ("cosine", torch.float16)):
        q, g = query.to(dtype), gallery.to(dtype)
        q_g, q_q, g_g = (metrics.pairwise_distance(a, b, metric=metric) for a, b in ((q, g), (q, q), (g, g)))
        torch.testing.assert_close(re_ranked(q, g, metric=metric, chunk_size=17), reference_re_rank(q_g, q_q, g_g),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("k1, k2, lambda_value", [(20, 6, 0.3), (5, 3, 0.5), (4, 1, 0.2)])
def test_re_ranking_from_features_matches_direct_implementation(k1, k2, lambda_value):
    generator = torch.Generator().manual_seed(k1)
    query, gallery = torch.randn(8, 4, generator=generator), torch.randn(20, 4, generator=generator)
    q_g, q_q, g_g = (metrics.pairwise_distance(a, b).double().numpy() for a, b in ((query, gallery), (query, query),
                                                                                    (gallery, gallery)))
    expected = direct_re_rank(q_g, q_q, g_g, k1, k2, lambda_value)
    result = re_ranked(query, gallery, k1=k1, k2=k2, lambda_value=lambda_value, chunk_size=3)
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-5)


def test_retrieval_metrics_with_re_ranking():
    query, gallery, *labels = labelled_features(6, 80, 300, num_ids=25)
    result = metrics.retrieval_metrics(query, gallery, *labels, rerank=True, keep_distances=True,
                                       rerank_chunk_size=33)
    q_g, q_q, g_g = (metrics.pairwise_distance(a, b) for a, b in ((query, gallery), (query, query),
                                                                   (gallery, gallery)))
    torch.testing.assert_close(result["distances"], reference_re_rank(q_g, q_q, g_g), rtol=0, atol=1e-5)
    assert_same_results(result, metrics_of_matrix(result["distances"], *labels))


def largest_torch_allocation(function):
    """The most memory one torch operation allocates for itself while ``function()`` runs, in bytes."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    return max(event.self_cpu_memory_usage for event in profiler.events())


def test_re_ranking_memory_is_bounded_by_the_chunk_size():
    num_query, num_gallery = 400, 3000
    query, gallery, *_ = labelled_features(7, num_query, num_gallery, num_ids=300)
    q_g, q_q, g_g = (metrics.pairwise_distance(a, b) for a, b in ((query, gallery), (query, query),
                                                                   (gallery, gallery)))
    joint_bytes, final_bytes = (num_query + num_gallery) ** 2 * 4, num_query * num_gallery * 4
    assert largest_torch_allocation(lambda: reference_re_rank(q_g, q_q, g_g, k1=6, k2=3)) >= joint_bytes
    largest = largest_torch_allocation(lambda: list(metrics.re_ranked_blocks(query, gallery, k1=6, k2=3,
                                                                             chunk_size=48)))
    assert largest < final_bytes / 4 and largest < joint_bytes / 32


def test_evaluation_memory_is_bounded_by_the_chunk_size(monkeypatch):
    num_query, num_gallery = 400, 12000
    query, gallery, *labels = labelled_features(8, num_query, num_gallery, num_ids=300)
    monkeypatch.setattr(metrics.rank, "_RANKING_ELEMENTS", 2048)
    monkeypatch.setattr(metrics.rank, "_SINGLE_SHOT_ELEMENTS", 1024)
    matrix_bytes = num_query * num_gallery * 4
    evaluate = partial(metrics.retrieval_metrics, query, gallery, *labels, chunk_size=8)
    assert largest_torch_allocation(partial(evaluate, keep_distances=True)) >= matrix_bytes
    assert largest_torch_allocation(evaluate) < matrix_bytes / 8
    tracemalloc.start()
    try:
        result = evaluate()
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert numpy_peak < matrix_bytes / 4
    assert_same_results(result, metrics_of_matrix(metrics.pairwise_distance(query, gallery), *labels))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_evaluation_and_re_ranking_match_the_cpu():
    query, gallery, *labels = labelled_features(9, 70, 260, num_ids=20, integer=True)
    on_cpu = metrics.retrieval_metrics(query, gallery, *labels, keep_distances=True)
    on_gpu = metrics.retrieval_metrics(query.half(), gallery.half(), *labels, keep_distances=True, device="cuda")
    assert on_gpu["distances"].device.type == "cuda"
    assert torch.equal(on_gpu["distances"].cpu(), on_cpu["distances"])
    assert_same_results(on_gpu, on_cpu)
    re_ranked_on_cpu = re_ranked(query, gallery, chunk_size=50)
    re_ranked_on_gpu = re_ranked(query, gallery, chunk_size=50, device="cuda")
    assert re_ranked_on_gpu.device.type == "cuda"
    torch.testing.assert_close(re_ranked_on_gpu.cpu(), re_ranked_on_cpu, rtol=0, atol=1e-5)


def test_precomputed_gallery_norms_give_the_same_distances():
    generator = torch.Generator().manual_seed(4)
    query, gallery = torch.randn(5, 16, generator=generator), torch.randn(40, 16, generator=generator)
    norms = metrics.squared_norms(gallery)
    assert torch.equal(norms, gallery.pow(2).sum(dim=1))
    assert torch.equal(metrics.pairwise_distance(query, gallery, gallery_squared_norms=norms),
                       metrics.pairwise_distance(query, gallery))
