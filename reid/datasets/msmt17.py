"""MSMT17 as its authors distribute it: image folders plus the list files of the standard protocol.

    MSMT17_V1/{train,test}/PPPP/PPPP_NNN_CC_DATEslot_FFFF_K.jpg        (V2: mask_train_v2/, mask_test_v2/)
    MSMT17_V1/{list_train,list_val,list_query,list_gallery}.txt       lines "PPPP/<file name> pid"

CC is the camera, 1..15. The training set is list_train plus list_val (1,041 identities, 32,621 images); the
query and gallery lists keep the test identities' own ids (11,659 and 82,161 images). Files in no list are
not read.
"""
import os
import re

from ..errors import UsageError
from . import base

TITLE = "MSMT17"
IMAGE_FOLDERS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
LISTS = {"train": ("list_train.txt", "list_val.txt"), "query": ("list_query.txt",),
         "gallery": ("list_gallery.txt",)}
NUM_CAMERAS = 15
CAMERA_FIELD = re.compile(r"^\d+_\d+_(?P<cam>\d+)_")
LINE_FORMAT = "`0000/0000_000_01_0303morning_0015_0.jpg 0` (a path under the image folder, then the pid)"
DOWNLOAD_HINT = ("MSMT17 is distributed by its authors on request (see docs/datasets.md); pass its MSMT17_V1 or "
                 "MSMT17_V2 folder, or the folder holding it, with --data-dir.")


def _version_of(folder):
    """``MSMT17_V1`` or ``MSMT17_V2`` when ``folder`` holds that version's two image folders, else None."""
    for version, image_folders in IMAGE_FOLDERS.items():
        if all(os.path.isdir(os.path.join(folder, name)) for name in image_folders):
            return version
    return None


def find_version(root):
    """``(folder, version)``: ``root`` itself when it is an MSMT17 folder, else its MSMT17_V1/MSMT17_V2
    sub-folder; a UsageError when there is none or both."""
    base.check_root(root, DOWNLOAD_HINT)
    version = _version_of(root)
    if version is not None:
        return root, version
    found = [(os.path.join(root, name), _version_of(os.path.join(root, name))) for name in IMAGE_FOLDERS]
    found = [(folder, version) for folder, version in found if version is not None]
    if len(found) == 1:
        return found[0]
    if found:
        raise UsageError(f"The folder {root} holds both MSMT17_V1 and MSMT17_V2; pass the one to use with "
                         f"--data-dir (e.g. --data-dir {found[0][0]}).")
    raise UsageError(
        f"The folder {root} is not an MSMT17 folder (it contains: {base.folder_contents(root)}). Expected "
        f"MSMT17_V1/ (train/, test/ and the list_*.txt files) or MSMT17_V2/ (mask_train_v2/, mask_test_v2/ "
        f"and the list files), or one of them inside it; {DOWNLOAD_HINT}")


def camera_of(relative_path):
    """The 1-based camera of an MSMT17 image path (the third field of its file name), or None."""
    match = CAMERA_FIELD.match(os.path.basename(relative_path))
    return int(match["cam"]) if match else None


def read_list(folder, list_name, image_folder):
    """The ``(path, pid, camid)`` items of one list file of ``folder``, paths under ``image_folder``."""
    list_path = os.path.join(folder, list_name)
    if not os.path.isfile(list_path):
        raise UsageError(f"The MSMT17 list file {list_path} is missing (the folder contains: "
                         f"{base.folder_contents(folder)}). MSMT17 is read through its list_train.txt, "
                         f"list_val.txt, list_query.txt and list_gallery.txt, as distributed.")
    image_root = os.path.join(folder, image_folder)
    items, entries = [], []
    for number, fields in base.read_list_file(list_path):
        if len(fields) != 2:
            raise UsageError(f"{list_path} line {number}: expected two fields like {LINE_FORMAT}, "
                             f"got {' '.join(fields)!r}.")
        relative, pid_text = fields
        pid = base.list_integer(pid_text, list_path, number, "pid")
        camera = camera_of(relative)
        if camera is None or not 1 <= camera <= NUM_CAMERAS:
            raise UsageError(f"{list_path} line {number}: {relative} is not an MSMT17 image name (its third "
                             f"field must be the camera, 01..{NUM_CAMERAS}), as in {LINE_FORMAT}.")
        path = os.path.join(image_root, relative)
        items.append((path, pid, camera - 1))
        entries.append((number, path))
    if not items:
        raise UsageError(f"The MSMT17 list file {list_path} lists no image; expected lines like {LINE_FORMAT}.")
    base.check_listed_files(list_path, entries, image_root)
    return items


def load(root):
    """The ``base.Splits`` of an MSMT17_V1 or MSMT17_V2 folder (or of the folder holding it)."""
    folder, version = find_version(root)
    train_folder, test_folder = IMAGE_FOLDERS[version]
    image_folder = {"train": train_folder, "query": test_folder, "gallery": test_folder}
    splits = {split: [item for list_name in list_names
                      for item in read_list(folder, list_name, image_folder[split])]
              for split, list_names in LISTS.items()}
    return base.Splits(splits["train"], splits["query"], splits["gallery"], title=version)
