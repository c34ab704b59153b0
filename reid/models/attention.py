"""The DSA block: a GCT-style channel gate fused with an input-dependent spatial gate."""
import torch
from torch import nn

EPS = 1e-5


class DSA(nn.Module):
    """Deeply supervised self-attention on a (B, C, H, W) map: ``y = x + x * g_c * g_s``.

    Channel gate: ``e_c = alpha_c * sqrt(sum_hw x^2 + eps)``, normalised across channels,
    ``g_c = 1 + tanh(e_c * gamma_c / sqrt(mean_c e_c^2 + eps) + beta_c)``, shape (B, C, 1, 1).
    Spatial gate: ``e_s = alpha_s * sqrt(sum_c x^2 + eps)`` per position and channel, normalised across
    positions (not channels, which would cancel the input out), ``g_s = 1 + tanh(e_s * n_s + beta_s)``,
    shape (B, C, H, W). With the initial alpha = 1, gamma = 0, beta = 0 both gates are exactly 1.
    """

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        shape = (1, channels, 1, 1)
        self.alpha_c = nn.Parameter(torch.ones(shape))
        self.gamma_c = nn.Parameter(torch.zeros(shape))
        self.beta_c = nn.Parameter(torch.zeros(shape))
        self.alpha_s = nn.Parameter(torch.ones(shape))
        self.gamma_s = nn.Parameter(torch.zeros(shape))
        self.beta_s = nn.Parameter(torch.zeros(shape))

    def channel_gate(self, x):
        return self._channel_gate(x.square())

    def spatial_gate(self, x):
        return 1 + self._spatial_tanh(x.square())

    def _channel_gate(self, square):
        embedding = self.alpha_c * (square.sum(dim=(2, 3), keepdim=True) + EPS).sqrt()
        norm = self.gamma_c / (embedding.pow(2).mean(dim=1, keepdim=True) + EPS).sqrt()
        return 1 + torch.tanh(embedding * norm + self.beta_c)

    def _spatial_tanh(self, square):
        """``tanh(e_s * n_s + beta_s)`` without building e_s, the same function with fewer full-size tensors.

        With ``s = sqrt(sum_c x^2 + eps)``, ``e_s = alpha_s * s``, so ``mean_hw(e_s^2) = alpha_s^2 * mean_hw(s^2)``
        and ``e_s * n_s = s * k`` with the per-image, per-channel ``k = alpha_s * gamma_s /
        sqrt(alpha_s^2 * mean_hw(s^2) + eps)``.
        """
        energy = square.sum(dim=1, keepdim=True) + EPS
        scale = self.alpha_s * self.gamma_s / (self.alpha_s.pow(2) * energy.mean(dim=(2, 3), keepdim=True) + EPS).sqrt()
        return torch.addcmul(self.beta_s, energy.sqrt(), scale).tanh_()

    def gate(self, x):
        """The fused gate ``g_c * g_s`` of shape (B, C, H, W), as shown by the visualisation tools."""
        return self.channel_gate(x) * self.spatial_gate(x)

    def forward(self, x):
        """``x + x * g_c * g_s``, written ``x * (1 + g_c + g_c * tanh(...))`` to save full-size tensors."""
        square = x.square()
        channel = self._channel_gate(square)
        return x * torch.addcmul(1 + channel, channel, self._spatial_tanh(square))

    def extra_repr(self):
        return f"channels={self.channels}"
