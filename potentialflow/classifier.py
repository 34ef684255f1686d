"""The pair classifier: which potential moved G(z_a) to G(z_b)?"""

import torch
from torch import Tensor, nn

from potentialflow.vae.networks import feature_grid

__all__ = ["PairClassifier"]


class PairClassifier(nn.Module):
    """A small CNN on the channel-stacked image pair, giving K logits.

    Args:
        channels: image channels C (the input has 2 C).
        image_size: H = W.
        num_potentials: K.
        width: channels of the first convolution.
    """

    def __init__(self, channels: int, image_size: int, num_potentials: int, width: int = 32):
        super().__init__()
        layers, size = feature_grid(image_size)
        chans = [2 * channels] + [width * min(2**i, 2) for i in range(layers)]
        blocks = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            blocks += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.ReLU()]
        self.net = nn.Sequential(
            *blocks,
            nn.Flatten(),
            nn.Linear(chans[-1] * size * size, 128),
            nn.ReLU(),
            nn.Linear(128, num_potentials),
        )

    def forward(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        """x_a, x_b: (batch, C, H, W) -> logits (batch, K)."""
        return self.net(torch.cat([x_a, x_b], dim=1))
