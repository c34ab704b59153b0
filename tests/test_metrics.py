"""reid.metrics against plain, step-by-step reference implementations written here."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reid import metrics


def reference_rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Walk each query's stably sorted gallery, skipping its same-id same-camera entries."""
    cmc_sum = np.zeros(max_rank)
    average_precisions, inverse_negative_penalties = [], []
    for query in range(len(q_pids)):
        rank = found = 0
        first_rank = last_rank = None
        precisions = []
        for gallery in np.argsort(distmat[query], kind="stable"):
            same_id = g_pids[gallery] == q_pids[query]
            if same_id and g_camids[gallery] == q_camids[query]:
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
    num_valid = len(average_precisions)
    if num_valid == 0:
        return None
    return {"cmc": cmc_sum / num_valid, "mAP": np.mean(average_precisions),
            "mINP": np.mean(inverse_negative_penalties), "num_valid_queries": num_valid}


def reference_allshots(distmat, q_pids, g_pids, q_camids, g_camids, topk):
    """open-reid's cmc() with separate_camera_set, single_gallery_shot and first_match_break all False."""
    hits = np.zeros(topk)
    num_valid = 0
    for query in range(len(q_pids)):
        order = np.argsort(distmat[query], kind="stable")
        kept = [g for g in order if not (g_pids[g] == q_pids[query] and g_camids[g] == q_camids[query])]
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
