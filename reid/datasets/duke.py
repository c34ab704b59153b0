"""DukeMTMC-reID: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with names ``PPPP_cC_fFFFFFFF.jpg``.

PPPP is the identity, C the camera 1..8, F the frame.
"""
from . import base

TITLE = "DukeMTMC-reID"
SCHEME = "0001_c2_f0046182.jpg (PPPP_cC_fFFFFFFF)"
PATTERN = base.file_pattern(r"(?P<pid>-1|\d+)_c(?P<cam>\d)_f\d+")
DOWNLOAD_HINT = ("download DukeMTMC-reID and pass its folder (the one holding bounding_box_train/, query/ and "
                 "bounding_box_test/) with --data-dir, or use -d synthetic to train on a generated dataset.")


def load(root, name="duke"):
    """The ``base.Splits`` of a DukeMTMC-reID folder."""
    return base.load_standard_layout(name, root, PATTERN, SCHEME, DOWNLOAD_HINT)
