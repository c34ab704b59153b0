"""Market-1501: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with names ``PPPP_cCsS_FFFFFF_NN.jpg``.

PPPP is the identity (-1: junk, 0: distractor), C the camera 1..6, S the sequence, F the frame.
"""
from . import base

TITLE = "Market1501"
SCHEME = "0002_c1s1_000451_03.jpg (PPPP_cCsS_FFFFFF_NN)"
PATTERN = base.file_pattern(r"(?P<pid>-1|\d+)_c(?P<cam>\d)s\d+_\d+_\d+")
DOWNLOAD_HINT = ("download Market-1501 and pass its folder (the one holding bounding_box_train/, query/ and "
                 "bounding_box_test/) with --data-dir, or use -d synthetic to train on a generated dataset.")


def load(root, name="market"):
    """The ``base.Splits`` of a Market-1501-layout folder."""
    return base.load_standard_layout(name, root, PATTERN, SCHEME, DOWNLOAD_HINT)
