"""Convolutional encoder and decoder sized for 28x28 and 64x64 images."""

import torch
from torch import Tensor, nn

__all__ = ["ConvEncoder", "ConvDecoder", "feature_grid"]


def feature_grid(image_size: int) -> tuple[int, int]:
    """(number of stride-2 layers, size of the smallest feature map) for an image size.

    28 -> (2, 7) and 64 -> (3, 8): halve while the size is even and above 8.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size!r}")
    layers, size = 0, image_size
    while size % 2 == 0 and size > 8:
        layers, size = layers + 1, size // 2
    return layers, size


def _channels(layers: int, width: int) -> list[int]:
    return [width * min(2**i, 4) for i in range(layers)]


class ConvEncoder(nn.Module):
    """Images (batch, C, H, H) -> posterior mean and log-variance, each (batch, latent_dim)."""

    def __init__(self, in_channels: int, image_size: int, latent_dim: int, width: int = 32):
        super().__init__()
        layers, size = feature_grid(image_size)
        chans = [in_channels, *_channels(layers, width)]
        blocks = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            blocks += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.SiLU()]
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(chans[-1] * size * size, 256), nn.SiLU(), nn.Linear(256, 2 * latent_dim)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.head(self.features(x)).chunk(2, dim=-1)
        # A soft clamp keeps exp(logvar) finite early in training without a dead gradient.
        return mean, 8.0 * torch.tanh(logvar / 8.0)


class ConvDecoder(nn.Module):
    """Codes (batch, latent_dim) -> pixel logits (batch, C, H, H)."""

    def __init__(self, out_channels: int, image_size: int, latent_dim: int, width: int = 32):
        super().__init__()
        layers, size = feature_grid(image_size)
        chans = [*reversed(_channels(layers, width)), out_channels]
        self.shape = (chans[0], size, size)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, 256),
            nn.SiLU(),
            nn.Linear(256, chans[0] * size * size),
            nn.SiLU(),
        )
        blocks = []
        for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:])):
            blocks.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1))
            if i < len(chans) - 2:
                blocks.append(nn.SiLU())
        self.upsample = nn.Sequential(*blocks)

    def forward(self, z: Tensor) -> Tensor:
        return self.upsample(self.project(z).view(-1, *self.shape))
