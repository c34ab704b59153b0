"""The DSA block: a GCT-style channel gate fused with an input-dependent spatial gate."""
import torch
from torch import nn
from torch.autograd.function import once_differentiable

EPS = 1e-5


class DSA(nn.Module):
    """Deeply supervised self-attention on a (B, C, H, W) map: ``y = x + x * g_c * g_s``.

    Channel gate: ``e_c = alpha_c * sqrt(sum_hw x^2 + eps)``, normalised across channels,
    ``g_c = 1 + tanh(e_c * gamma_c / sqrt(mean_c e_c^2 + eps) + beta_c)``, shape (B, C, 1, 1).
    Spatial gate: ``e_s = alpha_s * sqrt(sum_c x^2 + eps)`` per position and channel, normalised across
    positions (not channels, which would cancel the input out), ``g_s = 1 + tanh(e_s * n_s + beta_s)``,
    shape (B, C, H, W). With the initial alpha = 1, gamma = 0, beta = 0 both gates are exactly 1.

    ``channel_gate``, ``spatial_gate`` and ``gate`` write the formulas out for the visualisation tools;
    ``forward`` computes the same function with a hand-written backward pass (see ``FusedDSA``), except under
    ``torch.jit.trace``, which cannot save a custom autograd function: there it runs the formulas
    (``reid.export`` traces the model for TorchScript).
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
        embedding = self.alpha_c * (x.square().sum(dim=(2, 3), keepdim=True) + EPS).sqrt()
        norm = self.gamma_c / (embedding.square().mean(dim=1, keepdim=True) + EPS).sqrt()
        return 1 + torch.tanh(embedding * norm + self.beta_c)

    def spatial_gate(self, x):
        embedding = self.alpha_s * (x.square().sum(dim=1, keepdim=True) + EPS).sqrt()
        norm = self.gamma_s / (embedding.square().mean(dim=(2, 3), keepdim=True) + EPS).sqrt()
        return 1 + torch.tanh(embedding * norm + self.beta_s)

    def gate(self, x):
        """The fused gate ``g_c * g_s`` of shape (B, C, H, W), as shown by the visualisation tools."""
        return self.channel_gate(x) * self.spatial_gate(x)

    def forward(self, x):
        if torch.jit.is_tracing():
            return x + x * self.gate(x)
        return FusedDSA.apply(x, self.alpha_c, self.gamma_c, self.beta_c, self.alpha_s, self.gamma_s, self.beta_s)

    def extra_repr(self):
        return f"channels={self.channels}"


class FusedDSA(torch.autograd.Function):
    """The DSA block as one autograd node: ``y = x * (1 + g_c + g_c * t)`` with ``t = g_s - 1``.

    With the block written as autograd over the formulas, the DSP step took 1.19-1.46x the plain network's
    on an H100: under autocast the float32 gate parameters promote the full-size (B, C, H, W) tensors to
    float32, and the spatial gate, built from broadcast operands only, comes out contiguous for a
    channels_last input, so every later element-wise op mixes layouts. Here every full-size tensor takes
    the input's dtype and memory format, the per-image statistics (one value per channel or per position)
    are computed in float32 or wider and rounded to the input's dtype only where they meet a full-size
    tensor, and the backward pass keeps just ``x`` and ``t`` at full size.

    The spatial gate is computed as ``t = tanh(beta_s + s * k)`` with ``s = sqrt(sum_c x^2 + eps)`` and
    ``k = alpha_s * gamma_s / sqrt(alpha_s^2 * mean_hw(s^2) + eps)``, which equals ``e_s * n_s + beta_s``.
    """

    @staticmethod
    def forward(ctx, x, alpha_c, gamma_c, beta_c, alpha_s, gamma_s, beta_s):
        with torch.autocast(x.device.type, enabled=False):
            stats = torch.promote_types(torch.promote_types(x.dtype, alpha_c.dtype), torch.float32)
            channel_root = (torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True).to(stats).square() + EPS).sqrt()
            channel_embedding = alpha_c * channel_root
            channel_scale = (channel_embedding.square().mean(dim=1, keepdim=True) + EPS).sqrt()
            channel_tanh = torch.tanh(channel_embedding * gamma_c / channel_scale + beta_c)

            position_energy = torch.linalg.vector_norm(x, dim=1, keepdim=True).to(stats).square()
            position_root = (position_energy + EPS).sqrt()
            spatial_denominator = alpha_s.square() * (position_energy.mean(dim=(2, 3), keepdim=True) + EPS) + EPS
            spatial_scale = alpha_s * gamma_s / spatial_denominator.sqrt()

            spatial_tanh = torch.empty_like(x)
            torch.addcmul(beta_s.to(x.dtype), position_root.to(x.dtype), spatial_scale.to(x.dtype),
                          out=spatial_tanh).tanh_()
            y = _multiplier(channel_tanh, spatial_tanh).mul_(x)
        ctx.save_for_backward(x, spatial_tanh, channel_root, channel_embedding, channel_scale, channel_tanh,
                              position_root, spatial_scale, spatial_denominator, alpha_c, gamma_c, alpha_s, gamma_s)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x, spatial_tanh, channel_root, channel_embedding, channel_scale, channel_tanh,
         position_root, spatial_scale, spatial_denominator, alpha_c, gamma_c, alpha_s, gamma_s) = ctx.saved_tensors
        stats = channel_root.dtype
        batch, channels, height, width = x.shape
        channel_gate = 1 + channel_tanh

        grad_multiplier = grad * x
        grad_multiplier_t = grad_multiplier * spatial_tanh
        grad_channel_gate = (grad_multiplier.sum(dim=(2, 3), keepdim=True, dtype=stats)
                             + grad_multiplier_t.sum(dim=(2, 3), keepdim=True, dtype=stats))
        # grad * x * (1 - t^2): the gradient at tanh's input, divided by g_c (in place, reusing the buffer)
        grad_spatial = grad_multiplier.addcmul_(grad_multiplier_t, spatial_tanh, value=-1)
        del grad_multiplier_t
        # The two per-image reductions run in the statistics' precision: in fp16 they overflow (NaN gradients).
        flat = grad_spatial.flatten(2).to(stats)
        grad_scale = channel_gate * torch.matmul(flat, position_root.flatten(2).transpose(1, 2)).view(
            batch, channels, 1, 1)
        grad_root = torch.matmul((channel_gate * spatial_scale).view(batch, 1, channels), flat).view(
            batch, 1, height, width)
        grad_beta_s = (channel_gate * grad_spatial.sum(dim=(2, 3), keepdim=True, dtype=stats)).sum(0, keepdim=True)
        del grad_spatial, flat

        grad_gamma_s = (grad_scale * alpha_s / spatial_denominator.sqrt()).sum(0, keepdim=True)
        grad_alpha_s = (grad_scale * gamma_s * EPS / spatial_denominator.pow(1.5)).sum(0, keepdim=True)
        grad_mean_energy = -0.5 * (grad_scale * spatial_scale * alpha_s.square() / spatial_denominator).sum(
            dim=1, keepdim=True)
        grad_position_energy = grad_root / (2 * position_root) + grad_mean_energy / (height * width)

        grad_logit = grad_channel_gate * (1 - channel_tanh.square())
        grad_beta_c = grad_logit.sum(0, keepdim=True)
        grad_gamma_c = (grad_logit * channel_embedding / channel_scale).sum(0, keepdim=True)
        grad_channel_scale = (-(grad_logit * channel_embedding * gamma_c).sum(dim=1, keepdim=True)
                              / channel_scale.square())
        grad_embedding = (grad_logit * gamma_c / channel_scale
                          + grad_channel_scale * channel_embedding / (channel_scale * channels))
        grad_alpha_c = (grad_embedding * channel_root).sum(0, keepdim=True)
        grad_channel_energy = grad_embedding * alpha_c / (2 * channel_root)

        grad_x = _multiplier(channel_tanh, spatial_tanh).mul_(grad)
        grad_x.addcmul_(x, (2 * grad_channel_energy).to(x.dtype)).addcmul_(x, (2 * grad_position_energy).to(x.dtype))
        parameter_grads = (grad_alpha_c, grad_gamma_c, grad_beta_c, grad_alpha_s, grad_gamma_s, grad_beta_s)
        return (grad_x, *(g.to(alpha_c.dtype) for g in parameter_grads))


def _multiplier(channel_tanh, spatial_tanh):
    """``1 + g_c + g_c * t`` at full size, in ``t``'s dtype and memory format: ``y = x * _multiplier``."""
    dtype = spatial_tanh.dtype
    return torch.addcmul((2 + channel_tanh).to(dtype), (1 + channel_tanh).to(dtype), spatial_tanh)
