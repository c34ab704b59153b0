"""Your own images with no code: ``-d custom --data-dir DIR``, in whichever of four forms DIR has.

* list files: ``DIR/train.txt``, ``query.txt`` and ``gallery.txt``, one ``path pid [camid]`` line per image
  (paths relative to DIR, ``#`` starts a comment line); the camid is on every line of a file or on none;
* identity folders: ``DIR/{train,query,gallery}/<identity>/<image>``, the camera taken from the file name by
  ``--name-pattern`` when it is given;
* image folders, Market-1501 style: ``DIR/{bounding_box_train,query,bounding_box_test}/<image>`` (or
  ``train/`` and ``gallery/``), identity and camera parsed from the file name by ``--name-pattern``
  (default: Market-1501's ``0002_c1s1_000451_03.jpg``);
* one folder, with ``--split parity``: every image directly in DIR, identity and camera parsed from the file
  name; even-numbered identities train, odd-numbered ones test. Each test identity's first image of each
  camera (lowest index, then name) is a query, its other images the gallery.

``--name-pattern`` is a Python regular expression searched in the file name, with the named groups ``pid``
and ``camid``. With ``--camera-ranges`` (e.g. ``0-4,5-9``) the camera is instead the position of the range
that holds the group ``index``, a whole number: ``PPPP_II.jpg`` with II 00-04 from camera 1 and 05-09 from
camera 2. Identities and cameras may be any text: identities that are all whole numbers keep their numbers,
others are numbered in sorted order; cameras are numbered in sorted order. Without cameras, query and gallery
images count as different cameras, so that every gallery image of a query's identity is a valid match.
Identity ``-1`` marks junk images, which are skipped (Market-1501's convention).
"""
import os
import re
from collections import defaultdict
from typing import NamedTuple

from ..errors import UsageError
from . import base

TITLE = "Custom"
SPLITS = ("train", "query", "gallery")
SPLIT_RULES = ("parity",)
LIST_FILES = {split: f"{split}.txt" for split in SPLITS}
FOLDERS = {"train": ("train", "bounding_box_train"), "query": ("query",),
           "gallery": ("gallery", "bounding_box_test")}
DEFAULT_NAME_PATTERN = r"^(?P<pid>-1|\d+)_c(?P<camid>\d+)"
INDEX_PATTERN_EXAMPLE = r"^(?P<pid>\d+)_(?P<index>\d+)\."
CAMERA_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
NUMBER = re.compile(r"\d+")
JUNK = "-1"
FORMS = ("DIR/train.txt, query.txt and gallery.txt (lines `path pid [camid]`); or DIR/train/, query/ and "
         "gallery/ with one sub-folder per identity; or DIR/bounding_box_train/, query/ and bounding_box_test/ "
         "(or train/ and gallery/) with images whose names --name-pattern parses; or, with --split parity, every "
         "image directly in DIR")
HINT = f"-d custom reads one of these forms: {FORMS}. See docs/datasets.md."


class RawImage(NamedTuple):
    """An image as read, before numbering: identity and camera as text (camera None when unknown), ``origin``
    (the file, or the list line) for error messages, ``order`` (index, name) for the split's query choice."""

    path: str
    identity: str
    camera: str
    origin: str
    order: tuple = (0, "")


def parse_camera_ranges(text):
    """``--camera-ranges`` ``"0-4,5-9"`` as ``((0, 4), (5, 9))``: camera 1 is the first range, camera 2 the
    second, and so on; ``7`` alone is the range 7-7. A UsageError when a range is malformed or reversed, or two
    overlap."""
    ranges = []
    for part in text.split(","):
        match = CAMERA_RANGE.fullmatch(part.strip())
        if match is None:
            raise UsageError(f"--camera-ranges {text!r}: {part.strip()!r} is not a range of image indices; write "
                             f"one FIRST-LAST range per camera, separated by commas, e.g. 0-4,5-9.")
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise UsageError(f"--camera-ranges {text!r}: the range {part.strip()} ends before it starts.")
        ranges.append((low, high))
    ordered = sorted(ranges)
    for (low, high), (next_low, next_high) in zip(ordered, ordered[1:]):
        if next_low <= high:
            raise UsageError(f"--camera-ranges {text!r}: the ranges {low}-{high} and {next_low}-{next_high} "
                             f"overlap; each image index must give one camera.")
    return tuple(ranges)


def compile_name_pattern(text, groups):
    """``text`` (``--name-pattern``) compiled; a UsageError when it is not a regular expression with the
    named ``groups``."""
    try:
        pattern = re.compile(text)
    except re.error as error:
        raise UsageError(f"--name-pattern {text!r} is not a valid regular expression ({error}).") from None
    missing = [group for group in groups if group not in pattern.groupindex]
    if missing:
        example = INDEX_PATTERN_EXAMPLE if "index" in groups else DEFAULT_NAME_PATTERN
        raise UsageError(
            f"--name-pattern {text!r} has no named group {' or '.join(missing)}; it needs "
            f"{' and '.join(f'(?P<{group}>...)' for group in groups)}, e.g. {example!r}.")
    return pattern


class NameRule:
    """What a file name says: the identity, camera and index that ``--name-pattern`` (and ``--camera-ranges``)
    read from it. ``groups`` are the groups the pattern must have besides the camera's."""

    def __init__(self, text, groups, camera_ranges=None, camera_required=True):
        self.text = text
        self.ranges = parse_camera_ranges(camera_ranges) if camera_ranges is not None else None
        self.ranges_text = camera_ranges
        camera_groups = ("index",) if self.ranges else (("camid",) if camera_required else ())
        self.pattern = compile_name_pattern(text, (*groups, *camera_groups))
        if self.ranges and "camid" in self.pattern.groupindex:
            raise UsageError(f"--name-pattern {text!r} has a camid group and --camera-ranges {camera_ranges} is "
                             f"given too; the camera comes from one of them: drop the camid group or the ranges.")
        self.used = [group for group in (*groups, "camid", "index") if group in self.pattern.groupindex]

    def read(self, name, path):
        """``(identity, camera, order)`` of the file ``name`` at ``path`` (identity or camera None when the
        pattern has no such group); None when the pattern does not match the name."""
        match = self.pattern.search(name)
        if match is None:
            return None
        skipped = [group for group in self.used if not match[group]]
        if skipped:
            raise UsageError(f"{path}: --name-pattern {self.text!r} matches this name, but its group "
                             f"{skipped[0]} matched nothing (it is optional or may be empty); make the "
                             f"group required, so that every matching name has a {skipped[0]}.")
        index = match["index"] if "index" in self.used else None
        if index is not None and not NUMBER.fullmatch(index):
            raise UsageError(f"{path}: the index {index!r} (the group index of --name-pattern {self.text!r}) is "
                             f"not a whole number.")
        camera = self.camera_of(int(index), path) if self.ranges else match.groupdict().get("camid")
        return match.groupdict().get("pid"), camera, (int(index) if index is not None else 0, name)

    def camera_of(self, index, path):
        """The camera (``"1"``, ``"2"``, ...) whose range holds ``index``; a UsageError naming the file when
        none does."""
        for camera, (low, high) in enumerate(self.ranges, start=1):
            if low <= index <= high:
                return str(camera)
        raise UsageError(f"{path}: the image index {index} is in no range of --camera-ranges {self.ranges_text} "
                         f"(camera 1 is the first range, camera 2 the second, ...); widen a range, or move the "
                         f"file out of the dataset.")


def _first_folder(root, names):
    """``root/name`` for the first of ``names`` that is a folder, else None."""
    paths = [os.path.join(root, name) for name in names]
    return next((path for path in paths if os.path.isdir(path)), None)


def find_form(root):
    """``("list files", paths)``, ``("identity folders", folders)`` or ``("image folders", folders)``: the
    form of ``root`` and its file or folder per split."""
    base.check_root(root, HINT)
    lists = {split: os.path.join(root, name) for split, name in LIST_FILES.items()}
    if any(os.path.exists(path) for path in lists.values()):
        missing = [path for path in lists.values() if not os.path.isfile(path)]
        if missing:
            raise UsageError(f"The custom dataset {root} has list files but not {' or '.join(missing)}; the "
                             f"list form needs train.txt, query.txt and gallery.txt.")
        return "list files", lists
    folders = {split: _first_folder(root, names) for split, names in FOLDERS.items()}
    if None in folders.values():
        with os.scandir(root) as entries:
            has_images = any(base.is_image_name(entry.name) and entry.is_file() for entry in entries)
        one_folder = (" It holds images directly: to split that one folder by identity, add --split parity."
                      if has_images else "")
        raise UsageError(f"The custom dataset {root} has none of the expected forms (it contains: "
                         f"{base.folder_contents(root)}).{one_folder} {HINT}")
    with os.scandir(folders["train"]) as entries:
        has_sub_folders = any(entry.is_dir() for entry in entries)
    return ("identity folders" if has_sub_folders else "image folders"), folders


def read_list(list_path, root):
    """Raw images of a ``path pid [camid]`` list file, and 0 (nothing is ignored in a list)."""
    images, entries, with_camera = [], [], None
    for number, fields in base.read_list_file(list_path):
        if len(fields) not in (2, 3):
            raise UsageError(f"{list_path} line {number}: expected `path pid [camid]` (separated by spaces, "
                             f"no space inside the path), got {' '.join(fields)!r}.")
        if with_camera is None:
            with_camera = len(fields) == 3
        elif with_camera != (len(fields) == 3):
            raise UsageError(f"{list_path} line {number}: {'no' if with_camera else 'a'} camid, unlike the lines "
                             f"above it; give a camid on every line of the file or on none.")
        pid = base.list_integer(fields[1], list_path, number, "pid")
        camera = str(base.list_integer(fields[2], list_path, number, "camid")) if with_camera else None
        path = os.path.join(root, fields[0])
        images.append(RawImage(path, str(pid), camera, f"{list_path} line {number}"))
        entries.append((number, path))
    base.check_listed_files(list_path, entries, root)
    return images, 0


def read_image_folder(folder, rule, identity=None, strict=False):
    """Raw images directly in ``folder``, and the number of other entries. The identity is the ``rule``'s
    ``pid``, or ``identity`` when given (an identity folder); without a rule there is no camera. An image
    whose name the rule does not match is ignored, or with ``strict`` a UsageError naming it."""
    images, ignored = [], 0
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not base.is_image_name(name) or not os.path.isfile(path):
            ignored += 1
            continue
        fields = rule.read(name, path) if rule is not None else (None, None, (0, name))
        if fields is None and strict:
            raise UsageError(f"{path}: the name does not match --name-pattern {rule.text!r}. With --split, every "
                             f"image directly in {folder} must match, so that none silently drops out of the "
                             f"split: fix the pattern, or move the file out of the folder.")
        if fields is None:
            ignored += 1
            continue
        pid, camera, order = fields
        images.append(RawImage(path, identity if identity is not None else pid, camera, path, order))
    return images, ignored


def read_identity_folders(folder, rule):
    """Raw images of ``folder/<identity>/<image>``; files directly in ``folder`` are ignored (counted)."""
    images, ignored = [], 0
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isdir(path):
            ignored += 1
            continue
        found, skipped = read_image_folder(path, rule, identity=name)
        images += found
        ignored += skipped
    return images, ignored


def identity_numbers(labels):
    """Identity label -> pid: the labels' own numbers when all are whole numbers, else their sorted order."""
    labels = sorted(set(labels))
    if all(NUMBER.fullmatch(label) for label in labels):
        return {label: int(label) for label in labels}
    return {label: number for number, label in enumerate(labels)}


def camera_numbers(labels):
    """Camera label -> 0-based camid, in numeric order when all labels are numbers (``01`` is ``1``), else
    in sorted order."""
    labels = set(labels)
    value = int if all(NUMBER.fullmatch(label) for label in labels) else str
    order = sorted({value(label) for label in labels})
    return {label: order.index(value(label)) for label in labels}


def read_split(form, source, split, rule, root):
    """Raw images and ignored count of one split, junk (identity -1) dropped; a UsageError when none is left."""
    if form == "list files":
        raw, ignored = read_list(source, root)
    elif form == "identity folders":
        raw, ignored = read_identity_folders(source, rule)
    else:
        raw, ignored = read_image_folder(source, rule)
    raw = [image for image in raw if image.identity != JUNK]
    if not raw:
        expected = {"list files": "`path pid [camid]` lines", "identity folders": f"identity sub-folders of "
                    f"{base.IMAGE_FILES}", "image folders": base.IMAGE_FILES}[form]
        named = " named as --name-pattern says" if rule is not None else ""
        raise UsageError(f"The {split} split {source} of the custom dataset has no usable image ({ignored} "
                         f"other entries were ignored); expected {expected}{named}.")
    return raw, ignored


def check_cameras(raw):
    """Whether the query and gallery images have cameras: both all or both none, else a UsageError."""
    has = {split: raw[split][0].camera is not None for split in ("query", "gallery")}
    if has["query"] != has["gallery"]:
        with_camera = "query" if has["query"] else "gallery"
        raise UsageError(f"The custom {with_camera} images have cameras but the others do not (e.g. "
                         f"{raw['gallery' if has['query'] else 'query'][0].origin}); give cameras to query and "
                         f"gallery alike, or to neither.")
    return has["query"]


def check_query_identities(query, gallery, query_origins):
    """A UsageError naming the first query image whose identity has no gallery image."""
    gallery_pids = {pid for _, pid, _ in gallery}
    absent = [(origin, pid) for (_, pid, _), origin in zip(query, query_origins) if pid not in gallery_pids]
    if absent:
        origin, pid = absent[0]
        raise UsageError(
            f"{origin}: the query identity {pid} has no image in the gallery ({len(absent)} query images have "
            f"an identity the gallery lacks); such a query cannot be evaluated. Add gallery images of it or "
            f"remove the query.")


def to_items(raw, pids, cameras, default_camera):
    """``(path, pid, camid)`` items of raw images, the camid ``default_camera`` when they have none."""
    return [(image.path, pids[image.identity],
             cameras[image.camera] if image.camera is not None else default_camera) for image in raw]


def name_rule(form, name_pattern, camera_ranges):
    """The ``NameRule`` of a form (None when its names are not parsed); a UsageError when --camera-ranges is
    given to a form without file names to read it from."""
    if form == "list files":
        if camera_ranges is not None:
            raise UsageError(f"--camera-ranges {camera_ranges} reads the image index in file names; list files "
                             f"give each image's camera in their third column (`path pid camid`) instead.")
        return None
    if form == "identity folders":
        if name_pattern is None and camera_ranges is not None:
            raise UsageError(f"--camera-ranges {camera_ranges} needs a --name-pattern with an index group "
                             f"(e.g. '_(?P<index>\\d+)\\.') to read the image index from the file names.")
        return NameRule(name_pattern, (), camera_ranges) if name_pattern is not None else None
    pattern = name_pattern or DEFAULT_NAME_PATTERN
    return NameRule(pattern, ("pid",), camera_ranges, camera_required=form == "image folders")


def load(root, name_pattern=None, camera_ranges=None, split=None):
    """The ``base.Splits`` of a custom dataset folder in any of the four forms (one folder with ``split``)."""
    if split is not None:
        return load_one_folder(root, name_rule("one folder", name_pattern, camera_ranges), split)
    form, sources = find_form(root)
    rule = name_rule(form, name_pattern, camera_ranges)
    raw, num_ignored = {}, 0
    for split_name in SPLITS:
        raw[split_name], ignored = read_split(form, sources[split_name], split_name, rule, root)
        num_ignored += ignored
    return to_splits(raw, num_ignored, f"{TITLE} ({form})")


def to_splits(raw, num_ignored, title):
    """``base.Splits`` of the raw images of each split: identities and cameras numbered, cameras checked."""
    test_cameras = check_cameras(raw)
    train_cameras = raw["train"][0].camera is not None
    cameras = camera_numbers(image.camera for images in raw.values() for image in images
                             if image.camera is not None)
    train_pids = identity_numbers(image.identity for image in raw["train"])
    test_pids = identity_numbers(image.identity for split in ("query", "gallery") for image in raw[split])
    train = to_items(raw["train"], train_pids, cameras, 0)
    query = to_items(raw["query"], test_pids, cameras, 0)
    gallery = to_items(raw["gallery"], test_pids, cameras, 0 if test_cameras else 1)
    check_query_identities(query, gallery, [image.origin for image in raw["query"]])
    return base.Splits(train, query, gallery, num_ignored, train_cameras=train_cameras, title=title)


def load_one_folder(root, rule, split):
    """The ``base.Splits`` of every image directly in ``root``, split by the rule ``split`` (``parity``)."""
    if split not in SPLIT_RULES:
        raise UsageError(f"Unknown --split {split!r}; choose one of: {', '.join(SPLIT_RULES)}.")
    base.check_root(root, HINT)
    raw, ignored = read_image_folder(root, rule, strict=True)
    raw = [image for image in raw if image.identity != JUNK]
    if not raw:
        raise UsageError(f"The custom dataset {root} (--split {split}) holds no {base.IMAGE_FILES} directly "
                         f"(it contains: {base.folder_contents(root)}); --split reads the images of one folder.")
    splits = split_by_parity(raw, root)
    return to_splits(splits, ignored, f"{TITLE} (one folder, {split} split)")


def split_by_parity(raw, root):
    """``{"train", "query", "gallery"}`` raw images: even-numbered identities train, odd-numbered ones test.

    Identities are numbered as ``identity_numbers`` does (their own numbers, or their sorted order). Of each
    test identity, the first image of each camera (lowest index, then name) is a query and the rest are the
    gallery; every test identity must be seen by two cameras or more, so that each query has a match from
    another camera. Without cameras, each test identity's first image is its query.
    """
    numbers = identity_numbers(image.identity for image in raw)
    train = [image for image in raw if numbers[image.identity] % 2 == 0]
    test = sorted((image for image in raw if numbers[image.identity] % 2 == 1),
                  key=lambda image: (numbers[image.identity], image.order))
    for name, images, parity in (("training", train, "even"), ("test", test, "odd")):
        if not images:
            raise UsageError(f"The custom dataset {root} has no {parity}-numbered identity, so --split parity "
                             f"leaves its {name} split empty ({len(numbers)} identities in all).")
    if test[0].camera is not None:
        check_two_cameras(test, root)
    query, gallery, seen = [], [], set()
    for image in test:
        first = (image.identity, image.camera) not in seen
        seen.add((image.identity, image.camera))
        (query if first else gallery).append(image)
    return {"train": train, "query": query, "gallery": gallery}


def check_two_cameras(test, root):
    """A UsageError naming the first test identity that only one camera saw."""
    cameras = defaultdict(set)
    for image in test:
        cameras[image.identity].add(image.camera)
    single = [identity for identity, seen_by in cameras.items() if len(seen_by) < 2]
    if single:
        example = next(image for image in test if image.identity == single[0])
        raise UsageError(
            f"{root}: the test identity {single[0]} is seen by camera {example.camera} only (e.g. {example.path}; "
            f"{len(single)} of the {len(cameras)} test identities are). --split parity makes each test identity's "
            f"first image of each camera a query, to be found among another camera's images, so every test "
            f"identity needs two cameras: check --name-pattern and --camera-ranges, or move its images out.")
