"""From (path, pid, camid) lists to batches: transforms, samplers, loaders and the model's input."""
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from .config import DEFAULT_INPUT_SIZE
from .errors import UsageError
from .images import read_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_PIXEL = tuple(round(255 * mean) for mean in IMAGENET_MEAN)


def input_size(height, width, trained_sizes):
    """The input (height, width): ``height``/``width`` where given (not None), else the first known training size
    in ``trained_sizes``, else 384x128."""
    known = [size for size in trained_sizes if size is not None]
    fallback = known[0] if known else DEFAULT_INPUT_SIZE
    height = fallback[0] if height is None else height
    width = fallback[1] if width is None else width
    if height < 16 or width < 16:
        raise UsageError(f"--height/--width must be at least 16 pixels, got {height}x{width}.")
    return height, width


def build_transform(height, width, train, random_erasing=0.0):
    """Resize to height x width (train: flip, optional random erasing with the mean colour), still uint8.

    The loaders yield uint8 batches; ``to_model_input`` makes them float and normalises them on the model's
    device. In a loader worker that conversion took more than half of the time per image, and uint8
    batches are a quarter of the bytes to pass between processes, pin and copy to the GPU.
    """
    steps = [v2.Resize((height, width), antialias=True)]
    if train:
        steps.append(v2.RandomHorizontalFlip())
    if train and random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=MEAN_PIXEL))
    return v2.Compose(steps)


def to_model_input(images, device, channels_last=False):
    """A (B, 3, H, W) uint8 batch -> the float32 ImageNet-normalised model input on ``device``."""
    images = images.to(device, non_blocking=True)
    images = v2.functional.normalize(v2.functional.to_dtype(images, torch.float32, scale=True), IMAGENET_MEAN,
                                     IMAGENET_STD)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


class ReidImages(Dataset):
    """Items ``(image, pid, camid, index)``; with ``cache`` every image is decoded once and kept in memory.

    The training samplers ask for ``(index, seed)``: that image's random augmentation is then drawn from
    ``seed`` alone, so it is the same whichever worker or process transforms it, and a run resumed in the
    middle of an epoch sees the same flips as an uninterrupted one.
    """

    def __init__(self, items, transform, cache=False):
        self.items = list(items)
        self.transform = transform
        self.cached = [read_image(path) for path, _, _ in self.items] if cache else None

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, pid, camid = self.items[index]
        image = self.cached[index] if self.cached is not None else read_image(path)
        if seed is None:
            return self.transform(image), pid, camid, index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), pid, camid, index


class _EpochSampler(Sampler):
    """Base for samplers whose order is a pure function of (seed, epoch), split across processes.

    ``set_epoch`` picks the epoch; ``set_start(step)`` skips the batches a resumed run has already seen.
    Each process takes every ``world_size``-th batch, so per-process batches never overlap.
    """

    def __init__(self, batch_size, seed, rank=0, world_size=1):
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.start_step = 0

    def set_start(self, step):
        self.start_step = step

    def _generator(self):
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def batches(self):
        raise NotImplementedError

    def _own_batches(self):
        batches = self.batches()
        usable = len(batches) // self.world_size * self.world_size
        return batches[self.rank:usable:self.world_size][self.start_step:]

    def __iter__(self):
        """``(index, seed)`` pairs (see ``ReidImages``); the seed depends on (seed, epoch, place in the epoch)."""
        base = (self.seed * 1_000_003 + self.epoch) * 1_000_003
        for number, batch in enumerate(self._own_batches(), start=self.start_step):
            place = (number * self.world_size + self.rank) * self.batch_size
            for slot, index in enumerate(batch):
                yield index, (base + place + slot) % 2**63

    def __len__(self):
        return sum(len(batch) for batch in self._own_batches())

    def steps_per_epoch(self):
        return len(self.batches()) // self.world_size


class ShuffleSampler(_EpochSampler):
    """A new random order of all images every epoch, in full batches (the last partial one is dropped)."""

    def __init__(self, num_items, batch_size, seed, rank=0, world_size=1):
        super().__init__(batch_size, seed, rank, world_size)
        self.num_items = num_items

    def batches(self):
        order = torch.randperm(self.num_items, generator=self._generator()).tolist()
        return [order[i:i + self.batch_size] for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]


class IdentitySampler(_EpochSampler):
    """Batches of P distinct identities x K images each (K = ``num_instances``, P = batch / K).

    Each identity's images are cut into groups of K (identities with fewer than K images are sampled with
    replacement); batches draw P identities that still have groups until fewer than P remain.
    """

    def __init__(self, pids, batch_size, num_instances, seed, rank=0, world_size=1):
        if batch_size % num_instances:
            raise UsageError(f"-b/--batch-size ({batch_size}) must be a multiple of --num-instances "
                             f"({num_instances}) for the identity sampler.")
        super().__init__(batch_size, seed, rank, world_size)
        self.num_instances = num_instances
        self.indices_by_pid = {}
        for index, pid in enumerate(pids):
            self.indices_by_pid.setdefault(pid, []).append(index)

    def batches(self):
        generator = self._generator()
        groups_by_pid = []
        for indices in self.indices_by_pid.values():
            indices = torch.tensor(indices)
            if len(indices) >= self.num_instances:
                chosen = indices[torch.randperm(len(indices), generator=generator)]
                usable = len(chosen) // self.num_instances * self.num_instances
                groups_by_pid.append(chosen[:usable].view(-1, self.num_instances).tolist())
            else:
                picks = torch.randint(len(indices), (self.num_instances,), generator=generator)
                groups_by_pid.append([indices[picks].tolist()])
        ids_per_batch = self.batch_size // self.num_instances
        batches = []
        while True:
            available = [pid for pid, groups in enumerate(groups_by_pid) if groups]
            if len(available) < ids_per_batch:
                return batches
            chosen = torch.randperm(len(available), generator=generator)[:ids_per_batch].tolist()
            batches.append(sum((groups_by_pid[available[i]].pop() for i in chosen), []))


def train_loader(items, config, rank=0, world_size=1):
    """The training loader of a ``DataConfig``: per-process batch ``config.batch_size // world_size``."""
    batch_size = config.batch_size // world_size
    transform = build_transform(config.height, config.width, train=True, random_erasing=config.random_erasing)
    dataset = ReidImages(items, transform, cache=config.cache_images)
    if config.num_instances > 0:
        sampler = IdentitySampler([pid for _, pid, _ in items], batch_size, config.num_instances, config.seed,
                                  rank, world_size)
    else:
        sampler = ShuffleSampler(len(items), batch_size, config.seed, rank, world_size)
    if sampler.steps_per_epoch() == 0:
        raise UsageError(f"The training split has {len(items)} images, fewer than one batch of "
                         f"-b/--batch-size {config.batch_size}; lower the batch size.")
    return _loader(dataset, batch_size, config.workers, sampler=sampler, generator=torch.Generator())


def start_epoch(loader, epoch, start_step=0):
    """Point the training loader at ``epoch``, from batch ``start_step`` (a run resumed mid-epoch).

    The order and every image's augmentation are functions of (seed, epoch, place in the epoch) (see
    ``ReidImages``), so nothing in the (persistent) worker processes needs reseeding.
    """
    loader.sampler.set_epoch(epoch)
    loader.sampler.set_start(start_step)


def test_loader(items, height, width, batch_size, workers, cache=False):
    """Items in order, resized to height x width, as uint8 batches."""
    transform = build_transform(height, width, train=False)
    return _loader(ReidImages(items, transform, cache=cache), batch_size, workers)


def _loader(dataset, batch_size, workers, sampler=None, generator=None):
    """``generator``: the training loader has its own, because a DataLoader draws its workers' base seed from
    it at every epoch; from the global generator, that draw would shift the dropout of a resumed run."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0, generator=generator,
                      drop_last=False)
