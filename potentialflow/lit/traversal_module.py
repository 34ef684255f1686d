"""Learning K potential flows on the latent space of a frozen VAE."""

import warnings

import torch
from torch import Tensor

from potentialflow.classifier import PairClassifier
from potentialflow.flows.odeflow import FlowConfig
from potentialflow.flows.traversal import TraversalModel, TraversalOutput, TraversalWeights
from potentialflow.lit.base import PotentialflowModule
from potentialflow.lit.checkpoints import read_checkpoint
from potentialflow.potentials.derivatives import resolve_laplacian_mode
from potentialflow.potentials.networks import PotentialNetwork
from potentialflow.potentials.pde import build_pde
from potentialflow.vae.model import VAE

__all__ = ["TraversalModule"]

VAE_KEYS = ("latent_dim", "channels", "image_size", "width")

# The VAE is frozen in eval mode on purpose; Lightning's warning about it is noise here.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")


def load_vae(vae_checkpoint: str | None, vae_hparams: dict | None) -> tuple[VAE, dict]:
    """Builds the VAE from stored hyperparameters, or from a VAE checkpoint's weights."""
    if vae_hparams is not None:
        return VAE(**{key: vae_hparams[key] for key in VAE_KEYS}), dict(vae_hparams)
    if vae_checkpoint is None:
        raise ValueError(
            "the traversal needs a trained VAE: set model.init_args.vae_checkpoint to a "
            "checkpoint written by 'train.py fit --config configs/mnist_vae.yaml'"
        )
    ckpt = read_checkpoint(vae_checkpoint, expected=("VAEModule",))
    hparams = {key: ckpt["hyper_parameters"][key] for key in VAE_KEYS}
    vae = VAE(**hparams)
    state = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("vae.")}
    vae.load_state_dict(state)
    return vae, hparams


class TraversalModule(PotentialflowModule):
    """K potentials trained with a pair classifier and a PDE constraint on a frozen decoder.

    Uses two optimizers (potentials with their PDE parameters, and the classifier) under
    manual optimisation, so ``trainer.global_step`` (and ``max_steps``) counts two optimizer
    steps per batch; schedules here count batches.

    Args:
        vae_checkpoint: checkpoint of a trained ``VAEModule``.
        vae_hparams: the VAE's architecture; filled in from ``vae_checkpoint`` and stored, so
            the traversal checkpoint loads on its own.
        num_potentials: K.
        hidden_dims: hidden widths of each potential MLP.
        activation: smooth activation of the potentials (ReLU is refused).
        pde: ``wave``, ``heat``, ``hamilton_jacobi`` or ``none``.
        pde_kwargs: extra arguments of the PDE (``speed`` for wave, ``diffusivity`` for heat).
        laplacian: ``auto``, ``exact`` or ``hutchinson``.
        num_probes: Hutchinson probes per sample.
        t_end: flow horizon T.
        num_points: output times on [0, T], including the start.
        solver: torchdiffeq method.
        step_size: fixed-step size (None: the spacing of the output times).
        adjoint: integrate with the adjoint method.
        variation_form: ``log``, ``hinge`` or ``none``.
        variation_eps: floor of the log form, or target image speed of the hinge form.
        variation_samples: samples per batch the variation term is measured on (None: all).
        weight_classification, weight_pde, weight_initial, weight_variation: loss weights.
        pde_warmup_batches: the PDE weights ramp linearly from 0 over this many batches.
        lr_potentials, lr_classifier: Adam learning rates.
        gradient_clip: max gradient norm per optimizer (0 disables clipping).
        seed: seed of the random draws during validation and testing.
    """

    def __init__(
        self,
        vae_checkpoint: str | None = None,
        vae_hparams: dict | None = None,
        num_potentials: int = 8,
        hidden_dims: tuple[int, ...] = (128, 128),
        activation: str = "tanh",
        pde: str = "wave",
        pde_kwargs: dict | None = None,
        laplacian: str = "auto",
        num_probes: int = 8,
        t_end: float = 3.0,
        num_points: int = 6,
        solver: str = "euler",
        step_size: float | None = None,
        adjoint: bool = False,
        variation_form: str = "log",
        variation_eps: float = 1e-6,
        variation_samples: int | None = 16,
        weight_classification: float = 1.0,
        weight_pde: float = 1.0,
        weight_initial: float = 0.1,
        weight_variation: float = 1.0,
        pde_warmup_batches: int = 200,
        lr_potentials: float = 1e-3,
        lr_classifier: float = 1e-3,
        gradient_clip: float = 5.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_probes < 1 or pde_warmup_batches < 0:
            raise ValueError(
                f"num_probes must be >= 1 and pde_warmup_batches >= 0, got {num_probes!r} "
                f"and {pde_warmup_batches!r}"
            )
        self.vae, vae_hparams = load_vae(vae_checkpoint, vae_hparams)
        self.save_hyperparameters()
        self.hparams["vae_hparams"] = vae_hparams
        self.automatic_optimization = False
        self.vae.requires_grad_(False).eval()
        d, size, channels = (vae_hparams[key] for key in ("latent_dim", "image_size", "channels"))
        resolve_laplacian_mode(laplacian, d)
        self.weights = TraversalWeights(
            weight_classification, weight_pde, weight_initial, weight_variation
        )
        self.model = TraversalModel(
            PotentialNetwork(d, num_potentials, tuple(hidden_dims), activation, max_time=t_end),
            build_pde(pde, num_potentials, **(pde_kwargs or {})),
            PairClassifier(channels, size, num_potentials),
            FlowConfig(t_end, num_points, solver, step_size, adjoint=adjoint),
            laplacian,
            num_probes,
            variation_form,
            variation_eps,
            variation_samples,
        )
        self.register_buffer("batches_trained", torch.zeros((), dtype=torch.long))
        self._counts: dict[str, Tensor] = {}

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()  # frozen: its normalisation statistics never move
        return self

    def decode(self, z: Tensor) -> Tensor:
        return self.vae.decode(z)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Start codes: the posterior means of the images, (batch, latent_dim)."""
        return self.vae.encode(x)[0]

    def pde_scale(self) -> float:
        """PDE weight ramp in [0, 1]; it counts batches, not optimizer steps."""
        warmup = self.hparams.pde_warmup_batches
        return 1.0 if warmup == 0 else min(1.0, float(self.batches_trained) / warmup)

    def compute(self, batch, generator=None, pde_scale: float = 1.0) -> TraversalOutput:
        """All loss terms for an image batch; deterministic when a generator is given."""
        with torch.enable_grad():
            return self.model(
                self.encode(batch[0]), self.decode, self.weights, pde_scale, generator
            )

    def training_step(self, batch, batch_idx: int) -> Tensor:
        out = self.compute(batch, pde_scale=self.pde_scale())
        self.check_finite(out.terms, "train")
        optimizers = self.optimizers()
        for opt in optimizers:
            opt.zero_grad()
        self.manual_backward(out.terms["loss"])
        for opt in optimizers:
            if self.hparams.gradient_clip > 0:
                self.clip_gradients(opt, self.hparams.gradient_clip, "norm")
            opt.step()
        self.batches_trained += 1
        self.log_terms(out.terms, "train", batch[0].shape[0])
        self.log("train/pde_scale", self.pde_scale(), on_step=True, on_epoch=False)
        return out.terms["loss"].detach()

    def _eval_step(self, batch, batch_idx: int, stage: str) -> None:
        generator = torch.Generator().manual_seed(self.hparams.seed * 100003 + batch_idx)
        out = self.compute(batch, generator)
        self.check_finite(out.terms, stage)
        self.log_terms({k: v.detach() for k, v in out.terms.items()}, stage, batch[0].shape[0])
        self._count(out)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _count(self, out: TraversalOutput) -> None:
        K = self.hparams.num_potentials
        correct = out.logits.argmax(-1) == out.k
        total = torch.bincount(out.k, minlength=K).float()
        hits = torch.bincount(out.k, weights=correct.float(), minlength=K)
        self._counts["total"] = self._counts.get("total", 0) + total.cpu()
        self._counts["hits"] = self._counts.get("hits", 0) + hits.cpu()

    def _log_per_potential(self, stage: str) -> None:
        if not self._counts:
            return
        accuracy = self._counts["hits"] / self._counts["total"].clamp(min=1)
        for k, value in enumerate(accuracy.tolist()):
            self.log(f"{stage}/accuracy_k{k}", value)
        self._counts = {}

    def on_validation_epoch_end(self) -> None:
        self._log_per_potential("val")

    def on_test_epoch_end(self) -> None:
        self._log_per_potential("test")

    def configure_optimizers(self):
        potentials = [*self.model.potentials.parameters(), *self.model.pde.parameters()]
        # One fused kernel per step instead of a loop over parameters; the same update rule.
        fused = self.device.type in ("cpu", "cuda")
        return [
            torch.optim.Adam(potentials, lr=self.hparams.lr_potentials, fused=fused),
            torch.optim.Adam(
                self.model.classifier.parameters(), lr=self.hparams.lr_classifier, fused=fused
            ),
        ]
