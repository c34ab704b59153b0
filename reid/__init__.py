"""DSP: Deeply Supervised Self-Attention for person re-identification.

``from reid import FeatureExtractor`` embeds images with a trained checkpoint (see ``reid.inference``); it is
imported on first use, so ``import reid`` alone loads neither PyTorch nor the model code.
"""

__all__ = ["FeatureExtractor"]


def __getattr__(name):
    if name == "FeatureExtractor":
        from .inference import FeatureExtractor
        return FeatureExtractor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
