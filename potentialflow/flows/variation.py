"""The variation term: each step of a flow should change the decoded image.

The image velocity is the Jacobian-vector product J_G(z) v of the generator G along the flow
velocity v, computed in forward mode. The paper subtracts its size without bound, which lets
one term run to minus infinity; here the reward is bounded or saturating.
"""

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["VARIATION_FORMS", "image_velocity", "variation_loss"]

VARIATION_FORMS = ("log", "hinge", "none")


def image_velocity(
    generator: Callable[[Tensor], Tensor], z: Tensor, v: Tensor
) -> tuple[Tensor, Tensor]:
    """Decodes z and measures how fast the image moves along v, in one forward-mode pass.

    Args:
        generator: z (batch, latent_dim) -> images (batch, ...).
        z: (batch, latent_dim) points on the flow.
        v: (batch, latent_dim) flow velocities at z.

    Returns:
        images G(z), and the image speed |J_G(z) v|^2 averaged over pixels, (batch,).
    """
    images, jv = torch.func.jvp(generator, (z,), (v,))
    return images, jv.flatten(1).pow(2).mean(-1)


def variation_loss(speed: Tensor, form: str = "log", eps: float = 1e-4) -> Tensor:
    """Bounded variation loss from image speeds (batch,), a scalar to minimise.

    Args:
        speed: |J_G(z) v|^2 per pixel, from :func:`image_velocity`.
        form: ``log`` gives -log(eps + speed), bounded above and with a vanishing pull once
            the image moves; ``hinge`` gives relu(eps - speed) / eps in [0, 1], which stops
            pushing once the speed reaches eps; ``none`` gives 0.
        eps: the floor inside the log, or the hinge's target speed.
    """
    if form not in VARIATION_FORMS:
        raise ValueError(f"unknown variation form {form!r}; choose one of {VARIATION_FORMS}")
    if form == "none":
        return speed.new_zeros(())
    if form == "log":
        return -torch.log(eps + speed).mean()
    return torch.relu(eps - speed).mean() / eps
