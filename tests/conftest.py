"""Shared fixtures."""
import pytest

from reid.datasets import synthetic

TINY_SYNTHETIC = dict(num_train_ids=8, num_test_ids=6, num_cameras=3, images_per_camera=3, height=64, width=32,
                      seed=0)


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """Root of a tiny synthetic Market-1501-layout dataset (8 train ids, 6 test ids, 3 cameras, 64x32),
    generated once per session; load it with ``datasets.create('synthetic', root)``."""
    root = tmp_path_factory.mktemp("data") / "synthetic"
    synthetic.generate(root, **TINY_SYNTHETIC)
    return root
