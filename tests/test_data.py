from collections import Counter

import pytest
import torch

from reid import data, datasets
from reid.config import DataConfig
from reid.errors import UsageError


def test_transforms_resize_to_portrait_and_the_model_input_is_normalised():
    image = torch.full((3, 40, 20), 255, dtype=torch.uint8)
    train = data.build_transform(64, 32, train=True, random_erasing=0.5)(image)
    test = data.build_transform(64, 32, train=False)(image)
    assert train.shape == test.shape == (3, 64, 32) and train.dtype == test.dtype == torch.uint8
    batch = data.to_model_input(torch.stack([test, test]), torch.device("cpu"), channels_last=True)
    assert batch.dtype == torch.float32 and batch.is_contiguous(memory_format=torch.channels_last)
    expected = (1 - torch.tensor(data.IMAGENET_MEAN)) / torch.tensor(data.IMAGENET_STD)
    assert torch.allclose(batch[1, :, 0, 0], expected, atol=1e-4)


def test_random_erasing_paints_the_mean_colour_which_normalises_to_about_zero():
    torch.manual_seed(0)
    image = torch.full((3, 64, 32), 255, dtype=torch.uint8)
    erased = data.build_transform(64, 32, train=True, random_erasing=1.0)(image)
    painted = erased != 255
    assert painted.any()
    assert all(set(erased[channel][painted[channel]].unique().tolist()) == {data.MEAN_PIXEL[channel]}
               for channel in range(3))
    assert data.to_model_input(erased[None], torch.device("cpu"))[0][painted].abs().max() < 0.01


def indices(sampler):
    return [index for index, _ in sampler]


def test_shuffle_sampler_covers_full_batches_and_changes_with_epoch():
    sampler = data.ShuffleSampler(num_items=10, batch_size=3, seed=1)
    first = indices(sampler)
    assert len(first) == len(sampler) == 9 and len(set(first)) == 9
    sampler.set_epoch(1)
    assert indices(sampler) != first
    sampler.set_epoch(0)
    assert indices(sampler) == first, "the order is a function of (seed, epoch)"


def test_sampler_start_skips_the_batches_already_seen():
    sampler = data.ShuffleSampler(num_items=12, batch_size=3, seed=1)
    everything = list(sampler)
    sampler.set_start(2)
    assert list(sampler) == everything[6:], "the same images with the same augmentation seeds"


def test_distributed_shards_are_disjoint_and_equal():
    shards = [list(data.ShuffleSampler(20, 2, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 10
    assert not {i for i, _ in shards[0]} & {i for i, _ in shards[1]}
    seeds = [seed for shard in shards for _, seed in shard]
    assert len(set(seeds)) == 20, "each image of the epoch gets its own augmentation seed"


def test_identity_sampler_batches_hold_k_images_of_p_ids():
    pids = [0] * 6 + [1] * 2 + [2] * 5 + [3] * 4
    sampler = data.IdentitySampler(pids, batch_size=4, num_instances=2, seed=0)
    batches = sampler.batches()
    assert batches
    for batch in batches:
        counts = Counter(pids[i] for i in batch)
        assert len(batch) == 4 and sorted(counts.values()) == [2, 2]
    shards = [indices(data.IdentitySampler(pids, 4, 2, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) > 0


def test_identity_sampler_needs_a_multiple_of_k():
    with pytest.raises(UsageError, match="--num-instances"):
        data.IdentitySampler([0, 1], batch_size=5, num_instances=2, seed=0)


def loader_config(**overrides):
    return DataConfig(**{**dict(batch_size=2, height=32, width=16, seed=1, workers=0), **overrides})


def test_train_loader_yields_batches_and_caches(write_image, tmp_path):
    items = [(write_image(tmp_path / f"{i}.png"), i % 2, 0) for i in range(5)]
    for cache in (False, True):
        loader = data.train_loader(items, loader_config(cache_images=cache))
        data.start_epoch(loader, 0)
        batches = list(loader)
        assert len(batches) == 2
        images, pids, camids, indices = batches[0]
        assert images.shape == (2, 3, 32, 16) and pids.dtype == torch.int64


def test_train_loader_refuses_a_split_smaller_than_a_batch(write_image, tmp_path):
    items = [(write_image(tmp_path / "a.png"), 0, 0)]
    with pytest.raises(UsageError, match="batch"):
        data.train_loader(items, loader_config(batch_size=4))


def test_train_loader_splits_the_total_batch_over_processes(write_image, tmp_path):
    items = [(write_image(tmp_path / f"{i}.png"), i % 4, 0) for i in range(16)]
    shards = []
    for rank in (0, 1):
        loader = data.train_loader(items, loader_config(batch_size=4, num_instances=2), rank=rank, world_size=2)
        data.start_epoch(loader, 0)
        batches = list(loader)
        assert loader.batch_size == 2 and all(len(indices) == 2 for *_, indices in batches)
        shards.append({int(i) for *_, indices in batches for i in indices})
    assert shards[0] and not shards[0] & shards[1]


def test_cached_images_are_decoded_once_not_again_in_workers(write_image, tmp_path, monkeypatch):
    items = [(write_image(tmp_path / f"{i}.png"), i % 2, 0) for i in range(4)]
    loader = data.train_loader(items, loader_config(workers=1, cache_images=True))

    def no_decoding(path):
        raise AssertionError(f"{path} decoded again")

    monkeypatch.setattr(data, "read_image", no_decoding)
    for epoch in range(2):
        data.start_epoch(loader, epoch)
        assert sum(len(images) for images, *_ in loader) == 4


def test_a_seeded_item_is_augmented_the_same_whatever_the_global_random_state(tiny_synthetic):
    items = datasets.create("synthetic", tiny_synthetic, verbose=False).train[:1]
    images = data.ReidImages(items, data.build_transform(96, 32, train=True, random_erasing=0.5))
    reference = images[(0, 123)][0]
    flips = set()
    for global_seed in range(8):
        torch.manual_seed(global_seed)
        assert torch.equal(images[(0, 123)][0], reference)
        flips.add(images[(0, global_seed)][0].sum().item())
    assert len(flips) > 1, "other seeds give other augmentations"


def test_input_size_prefers_the_flags_then_the_checkpoint_then_384x128():
    assert data.input_size(None, None, [None]) == (384, 128)
    assert data.input_size(None, None, [None, (128, 64), (256, 128)]) == (128, 64)
    assert data.input_size(96, None, [(128, 64)]) == (96, 64)
    assert data.input_size(96, 48, [(128, 64)]) == (96, 48)
    with pytest.raises(UsageError, match="at least 16 pixels, got 8x64"):
        data.input_size(8, None, [(128, 64)])
