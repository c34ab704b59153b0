"""Distances between query and gallery features, a block of query rows at a time (``distance_blocks``), or as the
whole (Q, G) matrix (``pairwise_distance``). Float16 features are converted to float32 a tile at a time."""
import torch
import torch.nn.functional as F

DISTANCE_CHUNK_SIZE = 4096  # most query rows per block of plain distances, by default
_DISTANCE_BLOCK_ELEMENTS = 1 << 26  # distances per block of plain distances, by default (256 MiB)
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
