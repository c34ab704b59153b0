"""CUHK03-NP, the new protocol of Zhong et al. (CVPR 2017), as its authors distribute it.

    cuhk03-np/{labeled,detected}/{bounding_box_train,query,bounding_box_test}/PPPP_cC_N.png

PPPP is the identity, C the camera of its pair (1 or 2), N the image. 767 training and 700 test identities;
``labeled`` (hand-drawn boxes) has 7,368 training, 1,400 query and 5,328 gallery images, ``detected`` (DPM
boxes) 7,365, 1,400 and 5,332.
"""
import os

from ..errors import UsageError
from . import base

TITLE = "CUHK03-NP"
VARIANTS = ("labeled", "detected")
FOLDER_NAME = "cuhk03-np"
SCHEME = "0001_c1_1.png (PPPP_cC_N)"
PATTERN = base.file_pattern(r"(?P<pid>-1|\d+)_c(?P<cam>\d)_\d+")
DOWNLOAD_HINT = ("get CUHK03-NP from https://github.com/zhunzhong07/person-re-ranking/tree/master/CUHK03-NP and "
                 "pass its cuhk03-np folder (the one holding labeled/ and detected/) with --data-dir.")


def find_variant_folder(root, variant):
    """``root/variant``, or ``root/cuhk03-np/variant`` when ``root`` holds the unpacked archive's folder."""
    base.check_root(root, DOWNLOAD_HINT)
    for folder in (root, os.path.join(root, FOLDER_NAME)):
        if os.path.isdir(os.path.join(folder, variant)):
            return os.path.join(folder, variant)
    if os.path.isdir(os.path.join(root, base.STANDARD_FOLDERS["train"])):
        raise UsageError(f"The folder {root} is one CUHK03-NP variant itself; pass the folder above it (the one "
                         f"holding labeled/ and detected/) with --data-dir and choose the variant with --cuhk03.")
    raise UsageError(f"The CUHK03-NP folder {root} has no sub-folder {variant} (it contains: "
                     f"{base.folder_contents(root)}); {DOWNLOAD_HINT}")


def load(root, variant="labeled"):
    """The ``base.Splits`` of the ``variant`` (``labeled`` or ``detected``) of a CUHK03-NP folder."""
    if variant not in VARIANTS:
        raise UsageError(f"Unknown CUHK03-NP variant {variant!r} (--cuhk03); choose labeled or detected.")
    folder = find_variant_folder(root, variant)
    return base.load_standard_layout(f"{TITLE} {variant}", folder, PATTERN, SCHEME, DOWNLOAD_HINT,
                                     title=f"{TITLE} ({variant})")
