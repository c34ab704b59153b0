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
        embedding = self.alpha_c * (x.pow(2).sum(dim=(2, 3), keepdim=True) + EPS).sqrt()
        norm = self.gamma_c / (embedding.pow(2).mean(dim=1, keepdim=True) + EPS).sqrt()
        return 1 + torch.tanh(embedding * norm + self.beta_c)

    def spatial_gate(self, x):
        embedding = self.alpha_s * (x.pow(2).sum(dim=1, keepdim=True) + EPS).sqrt()
        norm = self.gamma_s / (embedding.pow(2).mean(dim=(2, 3), keepdim=True) + EPS).sqrt()
        return 1 + torch.tanh(embedding * norm + self.beta_s)

    def gate(self, x):
        """The fused gate ``g_c * g_s`` of shape (B, C, H, W), as shown by the visualisation tools."""
        return self.channel_gate(x) * self.spatial_gate(x)

    def forward(self, x):
        return x + x * self.gate(x)

    def extra_repr(self):
        return f"channels={self.channels}"
