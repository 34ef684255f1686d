"""potentialflow: latent traversals of generative models as potential flows.

After Song, Keller, Sebe and Welling, "Latent Traversals in Generative Models as Potential
Flows" (ICML 2023). The numerics (potentials, PDEs, flows, metrics) are plain PyTorch;
``potentialflow.lit`` wires them into Lightning.
"""

__version__ = "0.1.0"
