"""DSP: Deeply Supervised Self-Attention for person re-identification."""
