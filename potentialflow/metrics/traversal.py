"""Metrics of latent traversals: which potential moved an image, which factors it moved, and
how well a flow follows an observed sequence.

* ``variation_predictability``: accuracy of a fresh CNN that tells, from an image pair
  ``(G(z), G(flow_k(z)))``, which potential ``k`` produced it (VP; Zhu et al., 2020,
  "Learning Disentangled Representations with Latent Variation Predictability"), trained on a
  small fraction of the pairs and tested on the rest. ``collect_traversal_pairs`` builds the
  pairs from a traversal model.
* ``traversal_factor_alignment``: with a ground-truth factor predictor (dSprites, Shapes3D),
  which factors each potential changes along its trajectories, and how exclusively.
  ``train_factor_predictor`` fits such a predictor.
* ``equivariance_error`` and ``linear_interpolation_codes``: distance between decoded flowed
  codes and an observed image sequence, and the straight-line stand-in flow of a plain VAE.

Public functions validate their inputs once and then call private cores on tensors or arrays.
Every network here trains on the CPU inside a forked RNG, so results depend only on ``seed``
and the global torch RNG is left untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "FactorPredictorCNN",
    "collect_traversal_pairs",
    "equivariance_error",
    "linear_interpolation_codes",
    "train_factor_predictor",
    "traversal_factor_alignment",
    "variation_predictability",
]

FactorPredictor = Callable[[Tensor], Any]
"""``predictor(images (n, C, H, W))`` -> list of F logits ``(n, size_f)`` or ``(n, F)`` ints."""


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _as_tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a numpy array or torch tensor, got {type(value)}"
        ) from error


def _as_images(
    value: Any, name: str, layout: str, dims: int = 4, dtype: torch.dtype = torch.float32
) -> Tensor:
    """A finite ``dtype`` tensor with ``dims`` dimensions, the last three being (C, H, W)."""
    tensor = _as_tensor(value, name)
    if tensor.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D {layout}, got shape {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(tensor.shape)}")
    if not (tensor.is_floating_point() or _is_integer(tensor)):
        raise TypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    tensor = tensor.to(dtype)
    bad = int(tensor.numel() - torch.isfinite(tensor).sum())
    if bad:
        raise ValueError(f"{name} must be finite, got {bad} NaN or infinite entries")
    return tensor


def _is_integer(tensor: Tensor) -> bool:
    return (
        not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool
    )


def _as_indices(value: Any, name: str, length: int, upper: int, upper_name: str) -> Tensor:
    """A 1-D int64 tensor of ``length`` indices in ``[0, upper)``."""
    tensor = _as_tensor(value, name)
    if tensor.dim() != 1 or tensor.shape[0] != length:
        raise ValueError(f"{name} must be 1-D of length {length}, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        # Float labels are common (e.g. from a DataLoader); accept them when exact.
        if not torch.all(torch.isfinite(tensor) & (tensor == tensor.round())):
            raise ValueError(f"{name} must hold integer indices, got non-integral values")
    elif not _is_integer(tensor):
        raise TypeError(f"{name} must hold integer indices, got dtype {tensor.dtype}")
    tensor = tensor.long()
    if length and (tensor.min() < 0 or tensor.max() >= upper):
        raise ValueError(
            f"{name} must lie in [0, {upper_name}={upper}), got values in "
            f"[{int(tensor.min())}, {int(tensor.max())}]"
        )
    return tensor


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number in the open interval (0, 1), got {value!r}")
    if not 0 < value < 1:
        raise ValueError(f"{name} must be a number in the open interval (0, 1), got {value!r}")
    return float(value)


def _check_factor_sizes(value: Any) -> list[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"factor_sizes must be a sequence of integers >= 1, got {value!r}")
    sizes = [_check_int(size, "every entry of factor_sizes", 1) for size in value]
    if not sizes:
        raise ValueError("factor_sizes must name at least one factor, got an empty sequence")
    return sizes


def _check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}, "
            f"expected the same shape"
        )


# --------------------------------------------------------------------------------------------
# Small CNNs
# --------------------------------------------------------------------------------------------


class _ConvTrunk(nn.Module):
    """Stride-2 convolutions down to at most 8 px, pooled to a 4 x 4 grid, then a feature vector.

    Halving until the map is at most 8 px gives 2 layers at 28 px and 3 at 64 px, so both sizes
    end on a similar grid; the fixed 4 x 4 pool keeps coarse position, which the position
    factors of dSprites need, while making the head independent of the image size.
    """

    def __init__(self, in_channels: int, image_size: int, width: int = 16, features: int = 64):
        super().__init__()
        self.features = features
        channels, size, layers = [in_channels], image_size, []
        while size > 8 or len(channels) < 3:
            out = width * min(2 ** (len(channels) - 1), 2)
            layers += [nn.Conv2d(channels[-1], out, 3, stride=2, padding=1), nn.ReLU()]
            channels.append(out)
            size = (size + 1) // 2
        self.net = nn.Sequential(
            *layers,
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(channels[-1] * 16, features),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (batch, in_channels, H, W) -> (batch, features)."""
        return self.net(x)


class _PairCNN(nn.Module):
    """Classifies an image pair into the potential that produced it.

    The input stacks ``x_a`` with ``x_b - x_a`` on the channels: the same information as the
    raw pair, but the change, which is what identifies the potential, is then linear in the
    input instead of having to be learned from two separate channels.
    """

    def __init__(self, channels: int, image_size: int, num_classes: int):
        super().__init__()
        self.trunk = _ConvTrunk(2 * channels, image_size)
        self.head = nn.Linear(self.trunk.features, num_classes)

    def forward(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        """x_a, x_b: (batch, C, H, W) -> logits (batch, num_classes)."""
        return self.head(self.trunk(torch.cat([x_a, x_b - x_a], dim=1)))


class FactorPredictorCNN(nn.Module):
    """A shared CNN trunk with one classification head per ground-truth factor.

    Args:
        channels: image channels C.
        image_size: H (= W; the smaller side is used otherwise).
        factor_sizes: number of values of each factor.
    """

    def __init__(self, channels: int, image_size: int, factor_sizes: Sequence[int]):
        super().__init__()
        self.trunk = _ConvTrunk(channels, image_size)
        self.heads = nn.ModuleList(nn.Linear(self.trunk.features, size) for size in factor_sizes)

    def forward(self, images: Tensor) -> list[Tensor]:
        """images: (batch, C, H, W) -> list of F logits, the f-th of shape (batch, size_f)."""
        features = self.trunk(images)
        return [head(features) for head in self.heads]


def _batches(num_samples: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    order = torch.randperm(num_samples, generator=generator)
    return list(order.split(batch_size))


# --------------------------------------------------------------------------------------------
# Variation predictability
# --------------------------------------------------------------------------------------------


def _split_sizes(num_pairs: int, train_fraction: float) -> tuple[int, int]:
    # Round half up rather than Python's half-to-even, and keep both sides non-empty.
    num_train = min(max(int(np.floor(train_fraction * num_pairs + 0.5)), 1), num_pairs - 1)
    return num_train, num_pairs - num_train


def _train_pair_cnn(x_a, x_b, labels, num_classes, epochs, batch_size, lr, generator):
    model = _PairCNN(x_a.shape[1], min(x_a.shape[2:]), num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for rows in _batches(labels.shape[0], batch_size, generator):
            loss = F.cross_entropy(model(x_a[rows], x_b[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def _predict_pairs(model: _PairCNN, x_a: Tensor, x_b: Tensor, batch_size: int) -> Tensor:
    chunks = zip(x_a.split(batch_size), x_b.split(batch_size))
    return torch.cat([model(a, b).argmax(-1) for a, b in chunks])


def _accuracy(predicted: Tensor, labels: Tensor) -> float:
    # Integer counts keep the ratio exact (a float32 mean would not be, e.g. 87/360).
    return int((predicted == labels).sum()) / labels.shape[0]


def _per_class_accuracy(predicted: Tensor, labels: Tensor, num_classes: int) -> list:
    accuracies: list[float | None] = []
    for label in range(num_classes):
        rows = labels == label
        # A class absent from the test pairs has no accuracy; 0.0 would read as a failure.
        accuracies.append(_accuracy(predicted[rows], labels[rows]) if rows.any() else None)
    return accuracies


def _compute_vp(x_a, x_b, labels, num_classes, train_fraction, epochs, batch_size, lr, seed):
    num_train, num_test = _split_sizes(labels.shape[0], train_fraction)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(labels.shape[0], generator=generator)
        train, test = order[:num_train], order[num_train:]
        model = _train_pair_cnn(
            x_a[train], x_b[train], labels[train], num_classes, epochs, batch_size, lr, generator
        )
    predicted = _predict_pairs(model, x_a[test], x_b[test], batch_size)
    return {
        "vp": _accuracy(predicted, labels[test]),
        "chance": 1.0 / num_classes,
        "num_train": num_train,
        "num_test": num_test,
        "per_class": _per_class_accuracy(predicted, labels[test], num_classes),
    }


def variation_predictability(
    pairs_a: Any,
    pairs_b: Any,
    labels: Any,
    num_classes: int,
    train_fraction: float = 0.1,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict:
    """Variation predictability (VP; Zhu et al., 2020): can a classifier tell which potential
    produced an image pair?

    A fresh small CNN (on ``x_a`` stacked with ``x_b - x_a``) is trained with cross-entropy on
    a random ``train_fraction`` of the pairs, and VP is its accuracy on the remaining pairs.
    Training on a small fraction (10 % in the protocol) rewards traversals whose effect is
    consistent enough to be recognised from few examples. Runs on the CPU and is deterministic
    for a given ``seed``; the global torch RNG state is restored afterwards.

    Args:
        pairs_a: (N, C, H, W) start images ``G(z)``, values in [0, 1].
        pairs_b: (N, C, H, W) end images ``G(flow_k(z))``.
        labels: (N,) integer index of the potential that produced each pair.
        num_classes: number of potentials K; labels lie in ``[0, K)``.
        train_fraction: fraction of the pairs used for training, in (0, 1); rounded half up to
            a count and clipped so that both sides hold at least one pair.
        epochs: passes over the training pairs.
        batch_size: pairs per optimisation step (also the evaluation chunk size).
        lr: Adam learning rate.
        seed: seed of the split, the initialisation and the batch order.

    Returns:
        ``{"vp": float, "chance": 1 / num_classes, "num_train": int, "num_test": int,
        "per_class": list}``. ``per_class`` holds the test accuracy of each class, ``None`` for
        a class absent from the test pairs.

    Raises:
        ValueError: If the image arrays are not 4-D with the same shape, ``labels`` does not
            have one index in ``[0, num_classes)`` per pair, there are fewer than 2 pairs, or
            a setting is out of range.
        TypeError: If an input is not a numeric array or tensor.
    """
    x_a = _as_images(pairs_a, "pairs_a", "(N, C, H, W)")
    x_b = _as_images(pairs_b, "pairs_b", "(N, C, H, W)")
    _check_same_shape(x_a, x_b, "pairs_a", "pairs_b")
    if x_a.shape[0] < 2:
        raise ValueError(f"need at least 2 pairs (one to train, one to test), got {x_a.shape[0]}")
    num_classes = _check_int(num_classes, "num_classes", 1)
    labels = _as_indices(labels, "labels", x_a.shape[0], num_classes, "num_classes")
    settings = (
        _check_fraction(train_fraction, "train_fraction"),
        _check_int(epochs, "epochs", 1),
        _check_int(batch_size, "batch_size", 1),
        _check_positive(lr, "lr"),
        _check_int(seed, "seed", 0),
    )
    return _compute_vp(x_a, x_b, labels, num_classes, *settings)


@torch.no_grad()
def collect_traversal_pairs(
    traverse: Callable[[Tensor, Tensor, Tensor], Tensor],
    decode: Callable[[Tensor], Tensor],
    z0: Tensor,
    num_potentials: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Image pairs for ``variation_predictability``: a random potential and direction per code.

    Runs under ``torch.no_grad()``, which the ODE flows accept (inference mode they do not).

    Args:
        traverse: ``traverse(z0, k, direction) -> trajectory (points, N, d)``, e.g.
            ``TraversalModule.model.traverse``.
        decode: ``decode(z (N, d)) -> images (N, C, H, W)``, e.g. ``TraversalModule.decode``.
        z0: (N, d) start codes.
        num_potentials: K; ``k`` is drawn uniformly from ``[0, K)``.
        generator: CPU generator for ``k`` and the directions (None: the global RNG).

    Returns:
        ``(x_a, x_b, k)``: start images ``decode(z0)`` and end images ``decode(trajectory[-1])``,
        both (N, C, H, W), and ``k`` (N,) int64 on the device of ``z0``.

    Raises:
        ValueError: If ``z0`` is not 2-D and non-empty, ``num_potentials`` < 1, or the
            trajectory does not have shape (points >= 2, N, d).
    """
    if not isinstance(z0, Tensor) or z0.dim() != 2 or z0.shape[0] == 0:
        shape = tuple(z0.shape) if isinstance(z0, Tensor) else type(z0)
        raise ValueError(f"z0 must be a non-empty 2-D tensor (N, latent_dim), got {shape}")
    num_potentials = _check_int(num_potentials, "num_potentials", 1)
    n = z0.shape[0]
    k = torch.randint(num_potentials, (n,), generator=generator).to(z0.device)
    signs = torch.randint(2, (n, 1), generator=generator).to(z0.device, z0.dtype) * 2 - 1
    trajectory = traverse(z0, k, signs)
    if trajectory.dim() != 3 or trajectory.shape[0] < 2 or trajectory.shape[1:] != z0.shape:
        raise ValueError(
            f"traverse must return a trajectory (points >= 2, {n}, {z0.shape[1]}), got shape "
            f"{tuple(trajectory.shape)}"
        )
    return decode(z0), decode(trajectory[-1]), k


# --------------------------------------------------------------------------------------------
# Factor alignment
# --------------------------------------------------------------------------------------------


def _predictions_to_array(output: Any, num_images: int, factor_sizes: list[int]) -> np.ndarray:
    """Predictor output (list of logits or (n, F) indices) -> (n, F) int64 indices."""
    if isinstance(output, list | tuple):
        if len(output) != len(factor_sizes):
            raise ValueError(
                f"factor_predictor returned {len(output)} logits, expected one per factor "
                f"(len(factor_sizes) = {len(factor_sizes)})"
            )
        for f, (logits, size) in enumerate(zip(output, factor_sizes)):
            if tuple(logits.shape) != (num_images, size):
                raise ValueError(
                    f"factor_predictor logits {f} have shape {tuple(logits.shape)}, expected "
                    f"({num_images}, factor_sizes[{f}]={size})"
                )
        return torch.stack([logits.argmax(-1).cpu() for logits in output], dim=1).numpy()
    tensor = _as_tensor(output, "factor_predictor output")
    if tuple(tensor.shape) != (num_images, len(factor_sizes)):
        raise ValueError(
            f"factor_predictor returned shape {tuple(tensor.shape)}, expected a list of "
            f"{len(factor_sizes)} logits or integer predictions ({num_images}, "
            f"{len(factor_sizes)})"
        )
    if tensor.is_floating_point() and not torch.all(tensor == tensor.round()):
        raise ValueError("factor_predictor returned non-integral predictions; return logits")
    return tensor.long().numpy()


def _check_predictions(predictions: np.ndarray, factor_sizes: list[int]) -> None:
    sizes = np.asarray(factor_sizes)
    outside = (predictions < 0) | (predictions >= sizes)
    if outside.any():
        f = int(np.flatnonzero(outside.any(axis=0))[0])
        raise ValueError(
            f"factor_predictor predicted value {int(predictions[outside[:, f], f][0])} "
            f"for factor {f}, allowed are [0, factor_sizes[{f}]={factor_sizes[f]})"
        )


@torch.no_grad()
def _predict_factors(predictor, images: Tensor, factor_sizes: list[int], batch_size: int):
    """(n, C, H, W) images -> (n, F) predicted factor indices, in evaluation mode."""
    module = predictor if isinstance(predictor, nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    try:
        chunks = [
            _predictions_to_array(predictor(chunk), chunk.shape[0], factor_sizes)
            for chunk in images.split(batch_size)
        ]
    finally:
        if was_training:
            module.train()
    predictions = np.concatenate(chunks)
    _check_predictions(predictions, factor_sizes)
    return predictions


def _change_rates(predictions: np.ndarray) -> np.ndarray:
    """(points, N, F) predicted factors -> (N, F) fraction of steps where each one changes."""
    return (predictions[1:] != predictions[:-1]).mean(axis=0)


def _alignment_matrix(rates: np.ndarray, k: np.ndarray, num_potentials: int) -> np.ndarray:
    matrix = np.zeros((num_potentials, rates.shape[1]))
    for potential in range(num_potentials):
        rows = k == potential
        if rows.any():
            matrix[potential] = rates[rows].mean(axis=0)
    return matrix


def _row_shares(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, where=totals > 0, out=np.zeros_like(matrix))


def _exclusivity(shares: np.ndarray) -> np.ndarray:
    """Per potential, (max share - 1/F) / (1 - 1/F): 1 for one factor, 0 for all equally."""
    moving = shares.sum(axis=1) > 0
    num_factors = shares.shape[1]
    if num_factors == 1:
        return moving.astype(np.float64)  # a single factor can only be moved exclusively
    top = shares.max(axis=1)
    # Rounding in the row normalisation can put an even row a hair below 1/F.
    scores = np.maximum((top - 1.0 / num_factors) / (1.0 - 1.0 / num_factors), 0.0)
    return np.where(moving, scores, 0.0)


def _compute_alignment(predictions: np.ndarray, k: np.ndarray, num_potentials: int) -> dict:
    matrix = _alignment_matrix(_change_rates(predictions), k, num_potentials)
    shares = _row_shares(matrix)
    per_potential = _exclusivity(shares)
    moving = matrix.sum(axis=1) > 0
    if not moving.all():
        logger.warning(
            "factor alignment: potentials %s change no factor, scored 0",
            np.flatnonzero(~moving).tolist(),
        )
    top = [int(np.argmax(row)) if any_move else None for row, any_move in zip(shares, moving)]
    distinct = {factor for factor in top if factor is not None}
    return {
        "matrix": matrix.tolist(),
        "shares": shares.tolist(),
        "score": float(per_potential.mean()),
        "per_potential": per_potential.tolist(),
        "coverage": len(distinct) / matrix.shape[1],
        "top_factor": top,
    }


def traversal_factor_alignment(
    factor_predictor: FactorPredictor,
    trajectories_images: Any,
    k: Any,
    num_potentials: int,
    factor_sizes: Sequence[int],
    batch_size: int = 256,
) -> dict:
    """Which ground-truth factors each potential changes along its trajectories, and how
    exclusively.

    The predictor labels every image on every trajectory. For a trajectory, the change rate of
    factor f is the fraction of its ``points - 1`` steps at which the predicted value of f
    differs from the previous point; ``M[k, f]`` averages it over the trajectories of potential
    k. Counting changes, rather than measuring ``|f_end - f_start|``, treats categorical factors
    (shape) and cyclic ones (orientation) like ordinal ones, and still counts a factor that goes
    and comes back. Rows of M are normalised to shares, and potential k scores
    ``(max_f share - 1/F) / (1 - 1/F)``: 1 if it changes a single factor, 0 if it changes all
    factors equally (with F = 1, 1 for any change). Potentials that change nothing, or have no
    trajectory, score 0 and count in the mean.

    Args:
        factor_predictor: callable on (n, C, H, W) images returning either a list of F logits,
            the f-th of shape (n, factor_sizes[f]) (argmax is taken), or (n, F) integer
            predictions. An ``nn.Module`` is evaluated in eval mode and its mode restored.
        trajectories_images: (points, N, C, H, W) decoded images along N trajectories,
            ``points >= 2``.
        k: (N,) potential index of each trajectory.
        num_potentials: K, the number of rows of the matrix.
        factor_sizes: number of values of each of the F factors.
        batch_size: images per predictor call.

    Returns:
        ``{"matrix": K x F list of change rates M, "shares": K x F row-normalised M,
        "score": mean exclusivity over all K potentials, "per_potential": list of K scores,
        "coverage": distinct top factors / F, "top_factor": list of K factor indices, None for
        a potential that changes nothing}``. Ties for the top factor go to the lower index.

    Raises:
        ValueError: On malformed shapes, indices outside ``[0, num_potentials)``, or predictor
            outputs of the wrong shape or outside ``[0, factor_sizes[f])``.
    """
    images = _as_images(trajectories_images, "trajectories_images", "(points, N, C, H, W)", 5)
    points, n = images.shape[:2]
    if points < 2:
        raise ValueError(
            f"trajectories_images needs at least 2 points per trajectory, got {points}"
        )
    num_potentials = _check_int(num_potentials, "num_potentials", 1)
    k = _as_indices(k, "k", n, num_potentials, "num_potentials").numpy()
    factor_sizes = _check_factor_sizes(factor_sizes)
    batch_size = _check_int(batch_size, "batch_size", 1)
    flat = _predict_factors(factor_predictor, images.flatten(0, 1), factor_sizes, batch_size)
    return _compute_alignment(flat.reshape(points, n, -1), k, num_potentials)


def train_factor_predictor(
    images: Any,
    factors: Any,
    factor_sizes: Sequence[int],
    epochs: int = 5,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 1e-3,
) -> nn.Module:
    """Fits a small CNN with one cross-entropy head per factor (for dSprites and Shapes3D).

    Trained on the CPU, deterministic for a given ``seed``; the global torch RNG state is
    restored afterwards.

    Args:
        images: (n, C, H, W) images in [0, 1].
        factors: (n, F) integer factor indices, factor f in ``[0, factor_sizes[f])``.
        factor_sizes: number of values of each factor.
        epochs: passes over the data.
        batch_size: images per optimisation step.
        seed: seed of the initialisation and the batch order.
        lr: Adam learning rate.

    Returns:
        The trained model in eval mode; ``model(images)`` returns a list of F logits
        (n, factor_sizes[f]), the input ``traversal_factor_alignment`` expects.

    Raises:
        ValueError: On malformed shapes, factors outside their sizes, or invalid settings.
    """
    x = _as_images(images, "images", "(n, C, H, W)")
    factor_sizes = _check_factor_sizes(factor_sizes)
    y = _as_factor_table(factors, x.shape[0], factor_sizes)
    epochs, batch_size = _check_int(epochs, "epochs", 1), _check_int(batch_size, "batch_size", 1)
    lr, seed = _check_positive(lr, "lr"), _check_int(seed, "seed", 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FactorPredictorCNN(x.shape[1], min(x.shape[2:]), factor_sizes)
        _fit_factor_predictor(model, x, y, epochs, batch_size, lr, seed)
    return model.eval()


def _as_factor_table(factors: Any, num_images: int, factor_sizes: list[int]) -> Tensor:
    table = _as_tensor(factors, "factors")
    expected = (num_images, len(factor_sizes))
    if tuple(table.shape) != expected:
        raise ValueError(
            f"factors must have shape (n, F) = {expected} to match images and factor_sizes, "
            f"got {tuple(table.shape)}"
        )
    columns = [
        _as_indices(table[:, f], f"factors[:, {f}]", num_images, size, f"factor_sizes[{f}]")
        for f, size in enumerate(factor_sizes)
    ]
    return torch.stack(columns, dim=1)


def _fit_factor_predictor(model, x, y, epochs, batch_size, lr, seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for rows in _batches(x.shape[0], batch_size, generator):
            logits = model(x[rows])
            loss = sum(F.cross_entropy(out, y[rows, f]) for f, out in enumerate(logits))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


# --------------------------------------------------------------------------------------------
# Equivariance on sequences
# --------------------------------------------------------------------------------------------


def equivariance_error(decoded: Any, targets: Any) -> float:
    """Mean per-image L1 distance between decoded flowed codes and the observed sequence.

    ``sum_pixels |G(z_t) - x_t|`` averaged over the steps t = 1..T and the N sequences; t = 0
    is skipped because both start from the same observation (its reconstruction error is a
    property of the VAE, not of the flow). Computed in float64.

    Args:
        decoded: (T + 1, N, C, H, W) decoded images ``G(z_t)`` along the flow.
        targets: (T + 1, N, C, H, W) observed images ``x_t``.

    Returns:
        The error, >= 0 (summed over C, H, W, so it scales with the image size).

    Raises:
        ValueError: If the arrays are not 5-D with the same shape, T < 1, or not finite.
    """
    layout = "(T + 1, N, C, H, W)"
    decoded = _as_images(decoded, "decoded", layout, 5, torch.float64)
    targets = _as_images(targets, "targets", layout, 5, torch.float64)
    _check_same_shape(decoded, targets, "decoded", "targets")
    if decoded.shape[0] < 2:
        raise ValueError(f"decoded needs T + 1 >= 2 time steps, got {decoded.shape[0]}")
    return float((decoded[1:] - targets[1:]).abs().sum(dim=(2, 3, 4)).mean())


def linear_interpolation_codes(z_start: Any, z_end: Any, num_points: int) -> Tensor:
    """Straight-line codes from ``z_start`` to ``z_end``: the stand-in flow of a plain VAE.

    Args:
        z_start: (N, d) codes of the first frames ``x_0``.
        z_end: (N, d) codes of the last frames ``x_T``.
        num_points: number of points including both ends (T + 1), at least 2.

    Returns:
        (num_points, N, d) codes; the first equals ``z_start`` and the last ``z_end`` exactly.
        Keeps the dtype and device of ``z_start`` when it is a tensor.

    Raises:
        ValueError: If the codes are not 2-D with the same shape or ``num_points`` < 2.
    """
    num_points = _check_int(num_points, "num_points", 2)
    start = z_start if isinstance(z_start, Tensor) else torch.as_tensor(np.asarray(z_start))
    end = z_end if isinstance(z_end, Tensor) else torch.as_tensor(np.asarray(z_end))
    if start.dim() != 2:
        raise ValueError(f"z_start must be 2-D (N, d), got shape {tuple(start.shape)}")
    _check_same_shape(start, end, "z_start", "z_end")
    if not start.is_floating_point():
        start = start.double()
    end = end.to(start)
    weights = torch.linspace(0.0, 1.0, num_points, dtype=start.dtype, device=start.device)
    weights = weights[:, None, None]
    # (1 - w) a + w b, unlike a + w (b - a), is exact at both ends.
    return (1 - weights) * start + weights * end
