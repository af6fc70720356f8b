"""Koopman autoencoder: MLP encoder/decoder around a linear latent map K from a continuous-time K_c.

Latents are row vectors, so one step is z @ K.T for a batch z of shape (n, latent).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "gelu": nn.GELU, "elu": nn.ELU}


def mlp(n_in: int, hidden: int, depth: int, n_out: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else hidden, hidden), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(hidden if depth else n_in, n_out))
    return nn.Sequential(*layers)


def bilinear(K_c: torch.Tensor, dt: float | torch.Tensor) -> torch.Tensor:
    """K = (I - dt/2 K_c)^-1 (I + dt/2 K_c): maps the left half-plane into the unit disc, so a
    stable K_c stays stable at any dt and a skew-symmetric K_c gives an orthogonal K."""
    eye = torch.eye(K_c.shape[0], dtype=K_c.dtype, device=K_c.device)
    return torch.linalg.solve(eye - 0.5 * dt * K_c, eye + 0.5 * dt * K_c)


class KoopmanAE(nn.Module):
    def __init__(self, state_dim: int, latent_dim: int, hidden: int, depth: int, activation: str,
                 dt: float):
        super().__init__()
        self.encoder = mlp(state_dim, hidden, depth, latent_dim, activation)
        self.decoder = mlp(latent_dim, hidden, depth, state_dim, activation)
        # Small random K_c: K starts near the identity, i.e. near "the latent does not move".
        self.K_c = nn.Parameter(torch.randn(latent_dim, latent_dim) * 0.01)
        # Buffers travel in the checkpoint, so evaluation needs no access to the training data.
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.register_buffer("dt", torch.tensor(float(dt)))

    @classmethod
    def from_params(cls, state_dim: int, model: Mapping, system: Mapping) -> KoopmanAE:
        return cls(state_dim, model["latent_dim"], model["hidden"], model["depth"],
                   model["activation"], system["dt"])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder((x - self.state_mean) / self.state_std)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z) * self.state_std + self.state_mean

    def koopman(self) -> torch.Tensor:
        return bilinear(self.K_c, self.dt)


def window_losses(model: KoopmanAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three training losses on windows x of shape (batch, T + 1, d), in standardised units."""
    K = model.koopman()
    z = model.encode(x)                                   # phi(x_{t+s}) for s = 0..T
    scale = model.state_std
    recon = (((model.decode(z) - x) / scale) ** 2).mean()
    z_hat, preds = z[:, 0], []
    for _ in range(x.shape[1] - 1):
        z_hat = z_hat @ K.T
        preds.append(z_hat)
    z_hat = torch.stack(preds, dim=1)                     # K^s phi(x_t) for s = 1..T
    align = ((z_hat - z[:, 1:]) ** 2).mean()
    pred = (((model.decode(z_hat) - x[:, 1:]) / scale) ** 2).mean()
    return {"recon": recon, "align": align, "pred": pred}


@torch.no_grad()
def rollout(model: KoopmanAE, x0: torch.Tensor, horizon: int, period: int = 0) -> torch.Tensor:
    """Predicted states for steps 1..horizon, shape (n, horizon, d).

    period 0: pure latent rollout psi(K^s phi(x0)). period k: after every k-th step the latent is
    re-encoded, z <- phi(psi(z)); k = 1 is every-step reencoding z <- phi(psi(K z)).
    """
    K_T = model.koopman().T
    z = model.encode(x0)
    out = torch.empty(x0.shape[0], horizon, x0.shape[1], dtype=x0.dtype)
    for s in range(1, horizon + 1):
        z = z @ K_T
        x_hat = model.decode(z)
        out[:, s - 1] = x_hat
        if period and s % period == 0:
            z = model.encode(x_hat)
    return out
