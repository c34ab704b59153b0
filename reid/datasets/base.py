"""What every dataset shares: the file-name parser, folder listing, list-file reader, validation split and
summary table.

A Market-1501-layout module only names its file-name pattern and folders; ``load_standard_layout`` does the
rest. A loader returns ``Splits``; ``build_dataset`` turns them into the ``ReidDataset`` the pipeline uses.
"""
import functools
import os
import re
from dataclasses import dataclass, field

from PIL import Image, ImageFile

from ..errors import UsageError

NAME_EXTENSION = r"\.\w+$"
IMAGE_FILES = "image files (any format Pillow reads: .jpg, .png, .bmp, .tif, .webp, ...)"
JUNK_PID = -1
STANDARD_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


@dataclass
class ReidDataset:
    """Lists of ``(path, pid, camid)``; ``train`` pids are 0..num_train_ids-1, the others keep the file's id."""

    name: str
    root: str
    train: list
    val_query: list = field(default_factory=list)
    val_gallery: list = field(default_factory=list)
    query: list = field(default_factory=list)
    gallery: list = field(default_factory=list)
    num_train_ids: int = 0
    num_ignored: int = 0

    def summary(self, title=None):
        """The open-reid table: identities and images per subset."""
        rows = [("train", self.num_train_ids, len(self.train))]
        if self.val_query or self.val_gallery:
            val = self.val_query + self.val_gallery
            rows.append(("val", count_ids(val), len(val)))
        rows += [("query", count_ids(self.query), len(self.query)),
                 ("gallery", count_ids(self.gallery), len(self.gallery))]
        lines = [f"{title or self.name} dataset loaded",
                 "  subset   | # ids | # images",
                 "  ---------------------------"]
        lines += [f"  {subset:<8} | {ids:5d} | {images:8d}" for subset, ids, images in rows]
        if self.num_ignored:
            lines.append(f"  (ignored {self.num_ignored} files whose names do not match the naming scheme)")
        return "\n".join(lines)


@dataclass
class Splits:
    """What a loader read: ``(path, pid, camid)`` lists with the files' own ids, and how to describe them.

    ``train_cameras`` is false when the training images carry no camera (custom data): the validation split
    then counts its query and gallery images as different cameras, as the custom test split does.
    ``title`` names the layout found (e.g. ``MSMT17_V2``) in the summary; None keeps the dataset's name.
    """

    train: list
    query: list
    gallery: list
    num_ignored: int = 0
    train_cameras: bool = True
    title: str = None


@functools.cache
def image_extensions():
    """The file-name extensions (lower case, no dot) of every image format Pillow decodes: ``jpg``, ``png``,
    ``bmp`` (VIPeR's), ``tif``, ``webp`` and the rest. Its stub formats (HDF5, GRIB, ...), which it names but
    cannot decode on its own, are left out. Computed on first use: Pillow imports all its plugins for it."""
    readable = set()
    for extension, format_name in Image.registered_extensions().items():
        factory = Image.OPEN.get(format_name, (None,))[0]
        stub = isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)
        if factory is not None and not stub:
            readable.add(extension.lstrip(".").lower())
    return frozenset(readable)


def is_image_name(filename):
    """Whether ``filename`` ends in the extension of a format Pillow decodes; the name alone decides, so that
    listing a folder of thousands of images opens none of them."""
    stem, dot, extension = filename.rpartition(".")
    return bool(stem) and extension.lower() in image_extensions()


def file_pattern(name_body):
    """Compile an anchored pattern from the part of a name before the image extension.

    ``name_body`` must define the groups ``pid`` (``-1`` for junk) and ``cam`` (1-based camera). The extension
    is checked by ``parse_name`` (``is_image_name``).
    """
    return re.compile(rf"^{name_body}{NAME_EXTENSION}")


def parse_name(filename, pattern):
    """``(pid, camid)`` of an image file name, camid 0-based; None when the name does not fit ``pattern`` or is
    not an image's."""
    match = pattern.match(filename)
    if match is None or not is_image_name(filename):
        return None
    pid, cam = int(match["pid"]), int(match["cam"])
    if cam < 1:
        return None
    return pid, cam - 1


def count_ids(items):
    return len({pid for _, pid, _ in items})


def list_folder(folder, pattern):
    """Items ``(path, pid, camid)`` of the images in ``folder`` sorted by name, junk dropped; plus the
    number of files whose names do not fit ``pattern``."""
    items, ignored = [], 0
    for filename in sorted(os.listdir(folder)):
        path = os.path.join(folder, filename)
        parsed = parse_name(filename, pattern)
        if parsed is None or not os.path.isfile(path):
            ignored += 1
            continue
        pid, camid = parsed
        if pid != JUNK_PID:
            items.append((path, pid, camid))
    return items, ignored


def check_root(root, download_hint):
    if not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "does not exist"
        raise UsageError(f"The dataset folder {root} {what}; {download_hint}")


def folder_contents(folder):
    """A short listing of ``folder`` for error messages: its first dozen entries."""
    contents = sorted(os.listdir(folder))
    if not contents:
        return "nothing"
    return ", ".join(contents[:12]) + (", ..." if len(contents) > 12 else "")


def load_standard_layout(name, root, pattern, scheme, download_hint, folders=STANDARD_FOLDERS, title=None):
    """``Splits`` of the train/query/gallery folders of ``root``.

    ``scheme`` describes the expected file names (for error messages).
    """
    check_root(root, download_hint)
    missing = [folder for folder in folders.values() if not os.path.isdir(os.path.join(root, folder))]
    if missing:
        raise UsageError(
            f"The {name} folder {root} has no sub-folder {' or '.join(missing)} "
            f"(it contains: {folder_contents(root)}). "
            f"Expected the layout {root}/{{{','.join(folders.values())}}}/ with images named like {scheme}; "
            f"pass the folder that holds these three sub-folders with --data-dir.")
    splits, num_ignored = {}, 0
    for split, folder in folders.items():
        path = os.path.join(root, folder)
        items, ignored = list_folder(path, pattern)
        if not items:
            raise UsageError(
                f"The {name} folder {path} has no usable image ({ignored} files with other names were "
                f"ignored). Expected {IMAGE_FILES} named like {scheme}.")
        splits[split] = items
        num_ignored += ignored
    return Splits(splits["train"], splits["query"], splits["gallery"], num_ignored, title=title)


def read_list_file(path):
    """``(line_number, fields)`` of each line of a list file that is neither blank nor a ``#`` comment.

    Reads what editors leave: Windows line ends, a UTF-8 byte-order mark, blank lines at the end.
    """
    try:
        with open(path, encoding="utf-8-sig") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"The list file {path} is not UTF-8 text; save it as UTF-8 (plain text).") from None
    except OSError as error:
        raise UsageError(f"Cannot read the list file {path}: {error.strerror or error}.") from None
    return [(number, line.split()) for number, line in enumerate(lines, start=1)
            if line.strip() and not line.lstrip().startswith("#")]


def list_integer(text, list_path, number, what):
    """``int(text)`` for a field of line ``number`` of ``list_path``; a UsageError naming both otherwise."""
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{list_path} line {number}: the {what} {text!r} is not a whole number.") from None


def check_listed_files(list_path, entries, relative_to):
    """Raise a UsageError naming the line of the first ``(line_number, path)`` entry whose file is missing."""
    missing = [(number, path) for number, path in entries if not os.path.isfile(path)]
    if missing:
        number, path = missing[0]
        raise UsageError(
            f"{list_path} line {number}: the image {path} does not exist ({len(missing)} of the {len(entries)} "
            f"images it lists are missing). Paths in this list are relative to {relative_to}.")


def relabel(items):
    """Map the pids of ``items`` to 0..N-1 in the order of the original ids; returns (items, N)."""
    new_label = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [(path, new_label[pid], camid) for path, pid, camid in items], len(new_label)


def validation_size(num_ids, num_val):
    """How many of ``num_ids`` identities to hold out: ``num_val``, but at most a fifth of them and at
    least one when there are two or more."""
    if num_val <= 0 or num_ids < 2:
        return 0
    return min(num_val, max(1, num_ids // 5))


def split_validation(items, num_val, cameras=True):
    """Hold out evenly spaced identities of ``items``: returns ``(train, val_query, val_gallery)``.

    ``val_query`` takes the first image of every (identity, camera) of the held-out identities and
    ``val_gallery`` the rest; ``train`` keeps the other identities with their original pids. Without
    ``cameras`` the items' camids mean nothing: val_query images get camera 0 and val_gallery images camera 1,
    so that every gallery image of a query's identity is a valid match.
    """
    ids = sorted({pid for _, pid, _ in items})
    size = validation_size(len(ids), num_val)
    held_out = {ids[i * len(ids) // size] for i in range(size)}
    train, val_query, val_gallery, seen = [], [], [], set()
    for path, pid, camid in items:
        if pid not in held_out:
            train.append((path, pid, camid))
        elif (pid, camid) in seen:
            val_gallery.append((path, pid, camid if cameras else 1))
        else:
            seen.add((pid, camid))
            val_query.append((path, pid, camid if cameras else 0))
    return train, val_query, val_gallery


def build_dataset(name, root, splits, combine_trainval, num_val):
    """Assemble a ``ReidDataset`` from ``Splits``: the optional validation split, then train relabelled
    to 0..N-1."""
    train, val_query, val_gallery = splits.train, [], []
    if not combine_trainval:
        train, val_query, val_gallery = split_validation(train, num_val, cameras=splits.train_cameras)
    train, num_train_ids = relabel(train)
    return ReidDataset(name=name, root=root, train=train, val_query=val_query, val_gallery=val_gallery,
                       query=splits.query, gallery=splits.gallery, num_train_ids=num_train_ids,
                       num_ignored=splits.num_ignored)
