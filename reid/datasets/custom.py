"""Your own images with no code: ``-d custom --data-dir DIR``, in whichever of three forms DIR has.

* list files: ``DIR/train.txt``, ``query.txt`` and ``gallery.txt``, one ``path pid [camid]`` line per image
  (paths relative to DIR, ``#`` starts a comment line); the camid is on every line of a file or on none;
* identity folders: ``DIR/{train,query,gallery}/<identity>/<image>``, the camera taken from the file name by
  ``--name-pattern`` when it is given;
* image folders, Market-1501 style: ``DIR/{bounding_box_train,query,bounding_box_test}/<image>`` (or
  ``train/`` and ``gallery/``), identity and camera parsed from the file name by ``--name-pattern``
  (default: Market-1501's ``0002_c1s1_000451_03.jpg``).

``--name-pattern`` is a Python regular expression searched in the file name, with the named groups ``pid``
and ``camid``. Identities and cameras may be any text: identities that are all whole numbers keep their
numbers, others are numbered in sorted order; cameras are numbered in sorted order. Without cameras, query
and gallery images count as different cameras, so that every gallery image of a query's identity is a valid
match. Identity ``-1`` marks junk images, which are skipped (Market-1501's convention).
"""
import os
import re

from ..errors import UsageError
from . import base

TITLE = "Custom"
SPLITS = ("train", "query", "gallery")
LIST_FILES = {split: f"{split}.txt" for split in SPLITS}
FOLDERS = {"train": ("train", "bounding_box_train"), "query": ("query",),
           "gallery": ("gallery", "bounding_box_test")}
DEFAULT_NAME_PATTERN = r"^(?P<pid>-1|\d+)_c(?P<camid>\d+)"
IMAGE_FILE = re.compile(rf"\.{base.IMAGE_EXTENSIONS}$")
NUMBER = re.compile(r"\d+")
JUNK = "-1"
FORMS = ("DIR/train.txt, query.txt and gallery.txt (lines `path pid [camid]`); or DIR/train/, query/ and "
         "gallery/ with one sub-folder per identity; or DIR/bounding_box_train/, query/ and bounding_box_test/ "
         "(or train/ and gallery/) with images whose names --name-pattern parses")
HINT = f"-d custom reads one of these forms: {FORMS}. See docs/datasets.md."


def compile_name_pattern(text, groups):
    """``text`` (``--name-pattern``) compiled; a UsageError when it is not a regular expression with the
    named ``groups``."""
    try:
        pattern = re.compile(text)
    except re.error as error:
        raise UsageError(f"--name-pattern {text!r} is not a valid regular expression ({error}).") from None
    missing = [group for group in groups if group not in pattern.groupindex]
    if missing:
        raise UsageError(
            f"--name-pattern {text!r} has no named group {' or '.join(missing)}; it needs "
            f"{' and '.join(f'(?P<{group}>...)' for group in groups)}, e.g. {DEFAULT_NAME_PATTERN!r}.")
    return pattern


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
        raise UsageError(f"The custom dataset {root} has none of the expected forms (it contains: "
                         f"{base.folder_contents(root)}). {HINT}")
    with os.scandir(folders["train"]) as entries:
        has_sub_folders = any(entry.is_dir() for entry in entries)
    return ("identity folders" if has_sub_folders else "image folders"), folders


def read_list(list_path, root):
    """Raw items ``(path, identity, camera or None, origin)`` of a ``path pid [camid]`` list file."""
    items, entries, with_camera = [], [], None
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
        items.append((path, str(pid), camera, f"{list_path} line {number}"))
        entries.append((number, path))
    base.check_listed_files(list_path, entries, root)
    return items, 0


def read_image_folder(folder, pattern, identity=None):
    """Raw items of the images directly in ``folder`` whose names ``pattern`` fits, and the number of other
    entries. The identity is the pattern's ``pid``, or ``identity`` when given (an identity folder)."""
    items, ignored = [], 0
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        match = pattern.search(name) if pattern is not None else None
        if not IMAGE_FILE.search(name) or not os.path.isfile(path) or (pattern is not None and match is None):
            ignored += 1
            continue
        camera = match["camid"] if match else None
        items.append((path, identity if identity is not None else match["pid"], camera, path))
    return items, ignored


def read_identity_folders(folder, pattern):
    """Raw items of ``folder/<identity>/<image>``; files directly in ``folder`` are ignored (counted)."""
    items, ignored = [], 0
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isdir(path):
            ignored += 1
            continue
        found, skipped = read_image_folder(path, pattern, identity=name)
        items += found
        ignored += skipped
    return items, ignored


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


def read_split(form, source, split, pattern, root):
    """Raw items and ignored count of one split, junk (identity -1) dropped; a UsageError when none is left."""
    if form == "list files":
        raw, ignored = read_list(source, root)
    elif form == "identity folders":
        raw, ignored = read_identity_folders(source, pattern)
    else:
        raw, ignored = read_image_folder(source, pattern)
    raw = [item for item in raw if item[1] != JUNK]
    if not raw:
        expected = {"list files": "`path pid [camid]` lines", "identity folders": "identity sub-folders of "
                    ".jpg/.jpeg/.png images", "image folders": ".jpg/.jpeg/.png images"}[form]
        named = " named as --name-pattern says" if pattern is not None else ""
        raise UsageError(f"The {split} split {source} of the custom dataset has no usable image ({ignored} "
                         f"other entries were ignored); expected {expected}{named}.")
    return raw, ignored


def check_cameras(raw):
    """Whether the query and gallery images have cameras: both all or both none, else a UsageError."""
    has = {split: raw[split][0][2] is not None for split in ("query", "gallery")}
    if has["query"] != has["gallery"]:
        with_camera = "query" if has["query"] else "gallery"
        raise UsageError(f"The custom {with_camera} images have cameras but the others do not (e.g. "
                         f"{raw['gallery' if has['query'] else 'query'][0][3]}); give cameras to query and "
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
    """``(path, pid, camid)`` items of raw items, the camid ``default_camera`` when they have none."""
    return [(path, pids[identity], cameras[camera] if camera is not None else default_camera)
            for path, identity, camera, _ in raw]


def load(root, name_pattern=None):
    """The ``base.Splits`` of a custom dataset folder in any of the three forms."""
    form, sources = find_form(root)
    pattern = None
    if form == "image folders":
        pattern = compile_name_pattern(name_pattern or DEFAULT_NAME_PATTERN, ("pid", "camid"))
    elif form == "identity folders" and name_pattern is not None:
        pattern = compile_name_pattern(name_pattern, ("camid",))
    raw, num_ignored = {}, 0
    for split in SPLITS:
        raw[split], ignored = read_split(form, sources[split], split, pattern, root)
        num_ignored += ignored
    test_cameras = check_cameras(raw)
    train_cameras = raw["train"][0][2] is not None
    cameras = camera_numbers(camera for items in raw.values() for _, _, camera, _ in items if camera is not None)
    train_pids = identity_numbers(identity for _, identity, _, _ in raw["train"])
    test_pids = identity_numbers(identity for split in ("query", "gallery") for _, identity, _, _ in raw[split])
    train = to_items(raw["train"], train_pids, cameras, 0)
    query = to_items(raw["query"], test_pids, cameras, 0)
    gallery = to_items(raw["gallery"], test_pids, cameras, 0 if test_cameras else 1)
    check_query_identities(query, gallery, [origin for *_, origin in raw["query"]])
    return base.Splits(train, query, gallery, num_ignored, train_cameras=train_cameras, title=f"{TITLE} ({form})")
