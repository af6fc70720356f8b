"""Docking proxy: a small message-passing network on RDKit molecular graphs, with uncertainty.

The network (plain torch, one graph batch = concatenated atoms with index tensors, no torch_geometric):
  h0 = Linear(atom features)                              atoms: element, degree, charge, Hs, aromatic,
  for each layer: m_i = sum_{j -> i} ReLU(h_j + E(e_ij))  hybridisation, ring; bonds: type, conjugated,
                  h_i = h_i + MLP(h_i + m_i)               ring  (GINE-style residual updates)
  readout = [sum_i h_i, mean_i h_i] -> MLP -> scalar
Uncertainty: an ensemble of K independently initialised members trained on bootstrap resamples
(`uncertainty: ensemble`), or one network with dropout kept on at prediction, K passes (`mc_dropout`).
mu and sigma are the mean and standard deviation over the K predictions, in target units.

Targets are standardised inside the model (mean/std of the training targets, stored in the checkpoint).
For docking the target is -score (kcal/mol; larger = better binder), so UCB a = mu + kappa * sigma
favours molecules predicted to bind well or not known yet.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from rdkit import Chem
from torch import nn

ELEMENTS = ("C", "N", "O", "F", "P", "S", "Cl", "Br", "I")       # + one "other" column
HYBRIDS = (Chem.HybridizationType.SP, Chem.HybridizationType.SP2, Chem.HybridizationType.SP3)
BOND_TYPES = (Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE, Chem.BondType.AROMATIC)
ATOM_DIM = len(ELEMENTS) + 1 + 6 + 3 + 5 + 1 + len(HYBRIDS) + 1 + 1    # 30
BOND_DIM = len(BOND_TYPES) + 2


def _one_hot(value: int, size: int) -> list[float]:
    out = [0.0] * size
    out[min(max(value, 0), size - 1)] = 1.0
    return out


def atom_features(atom: Chem.Atom) -> list[float]:
    sym = atom.GetSymbol()
    element = [float(sym == e) for e in ELEMENTS] + [float(sym not in ELEMENTS)]
    return (element + _one_hot(atom.GetDegree(), 6) + _one_hot(atom.GetFormalCharge() + 1, 3)
            + _one_hot(atom.GetTotalNumHs(), 5) + [float(atom.GetIsAromatic())]
            + [float(atom.GetHybridization() == h) for h in HYBRIDS]
            + [float(atom.IsInRing())] + [atom.GetMass() / 100.0])


def bond_features(bond: Chem.Bond) -> list[float]:
    bt = bond.GetBondType()
    return [float(bt == t) for t in BOND_TYPES] + [float(bond.GetIsConjugated()), float(bond.IsInRing())]


@dataclass
class GraphBatch:
    """Molecules as one disconnected graph: x (atoms, ATOM_DIM), edge_index (2, directed edges)
    src -> dst, edge_attr (edges, BOND_DIM), graph (atoms,) = molecule index of each atom."""

    x: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    graph: torch.Tensor
    n_graphs: int


def mol_graph(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(atom features, edge index (2, 2 * bonds), bond features) of one molecule."""
    x = np.array([atom_features(a) for a in mol.GetAtoms()], dtype=np.float32).reshape(-1, ATOM_DIM)
    src, dst, attr = [], [], []
    for b in mol.GetBonds():
        i, j, f = b.GetBeginAtomIdx(), b.GetEndAtomIdx(), bond_features(b)
        src += [i, j]
        dst += [j, i]
        attr += [f, f]
    return (x, np.array([src, dst], dtype=np.int64).reshape(2, -1),
            np.array(attr, dtype=np.float32).reshape(-1, BOND_DIM))


def batch_graphs(graphs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> GraphBatch:
    xs, eis, eas, gs, offset = [], [], [], [], 0
    for k, (x, ei, ea) in enumerate(graphs):
        if len(x) == 0:
            raise ValueError(f"molecule {k} of the batch has no atoms")
        xs.append(x)
        eis.append(ei + offset)
        eas.append(ea)
        gs.append(np.full(len(x), k, dtype=np.int64))
        offset += len(x)
    return GraphBatch(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(eis, 1)),
                      torch.from_numpy(np.concatenate(eas)), torch.from_numpy(np.concatenate(gs)),
                      len(graphs))


def featurize(mols: Iterable[Chem.Mol]) -> GraphBatch:
    return batch_graphs([mol_graph(m) for m in mols])


class GraphNet(nn.Module):
    """GINE-style message passing with residual updates, sum+mean readout, scalar output."""

    def __init__(self, hidden: int = 64, layers: int = 3, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Linear(ATOM_DIM, hidden)
        self.edge = nn.ModuleList(nn.Linear(BOND_DIM, hidden) for _ in range(layers))
        self.update = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
            for _ in range(layers))
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, 1))

    def forward(self, g: GraphBatch) -> torch.Tensor:
        h = self.embed(g.x)
        src, dst = g.edge_index
        for edge, update in zip(self.edge, self.update):
            msg = torch.relu(h[src] + edge(g.edge_attr))
            agg = torch.zeros_like(h).index_add_(0, dst, msg)
            h = h + update(h + agg)
        counts = torch.zeros(g.n_graphs).index_add_(0, g.graph, torch.ones(len(g.graph)))
        pooled = torch.zeros(g.n_graphs, h.shape[1]).index_add_(0, g.graph, h)
        readout = torch.cat([pooled, pooled / counts.clamp(min=1)[:, None]], 1)
        return self.head(readout)[:, 0]


@dataclass
class ProxyConfig:
    """Proxy hyperparameters (params `lambdazero.proxy`)."""

    hidden: int = 64
    """Width of atom states and MLPs."""
    layers: int = 3
    """Message-passing layers."""
    members: int = 5
    """Ensemble members K (or MC-dropout passes)."""
    uncertainty: str = "ensemble"
    """`ensemble` (K nets on bootstrap resamples) or `mc_dropout` (one net, dropout on at prediction)."""
    dropout: float = 0.1
    """Dropout rate (used by mc_dropout; ensemble members train without dropout)."""
    epochs: int = 150
    """Full passes over the training set per fit."""
    batch_size: int = 32
    """Molecules per gradient step."""
    lr: float = 3e-3
    """Adam learning rate."""
    weight_decay: float = 1e-4
    """Adam weight decay."""
    kappa: float = 0.2
    """UCB exploration weight: a = mu + kappa * sigma."""

    @classmethod
    def from_params(cls, p: dict) -> ProxyConfig:
        return cls(**{k: p[k] for k in cls.__dataclass_fields__ if k in p})


def ucb(mu: np.ndarray, sigma: np.ndarray, kappa: float) -> np.ndarray:
    """Upper confidence bound acquisition a = mu + kappa * sigma (target units: -score)."""
    return np.asarray(mu) + kappa * np.asarray(sigma)


class ProxyEnsemble:
    """K graph networks (or one MC-dropout network) predicting a standardised scalar target."""

    def __init__(self, cfg: ProxyConfig):
        if cfg.uncertainty not in ("ensemble", "mc_dropout"):
            raise ValueError(f"proxy uncertainty must be 'ensemble' or 'mc_dropout', got {cfg.uncertainty!r}")
        self.cfg = cfg
        self.nets = self._new_nets()
        self.y_mean, self.y_std = 0.0, 1.0

    def _new_nets(self) -> nn.ModuleList:
        cfg = self.cfg
        n_nets = cfg.members if cfg.uncertainty == "ensemble" else 1
        drop = 0.0 if cfg.uncertainty == "ensemble" else cfg.dropout
        return nn.ModuleList(GraphNet(cfg.hidden, cfg.layers, drop) for _ in range(n_nets))

    # --- training -------------------------------------------------------------------------------
    def fit(self, mols: Sequence[Chem.Mol], y: Sequence[float], seed: int) -> dict:
        """Fit from scratch on (mols, y); returns the final training RMSE (target units)."""
        y = np.asarray(y, dtype=np.float64)
        if len(y) < 2 or not np.isfinite(y).all():
            raise ValueError(f"proxy needs >= 2 finite targets, got {len(y)} (non-finite: "
                             f"{int((~np.isfinite(y)).sum())})")
        self.y_mean, self.y_std = float(y.mean()), float(max(y.std(), 1e-6))
        graphs = [mol_graph(m) for m in mols]
        yz = torch.tensor((y - self.y_mean) / self.y_std, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.nets = self._new_nets()          # every fit starts from fresh weights (deterministic)
        for net in self.nets:
            # bootstrap resample per ensemble member (its own view of the data -> diverse members)
            idx = (rng.integers(0, len(y), len(y)) if self.cfg.uncertainty == "ensemble"
                   else np.arange(len(y)))
            self._fit_one(net, [graphs[i] for i in idx], yz[idx], gen)
        mu, _ = self.predict_graphs(batch_graphs(graphs))
        return {"train_rmse": float(np.sqrt(np.mean((mu - y) ** 2))), "n_train": int(len(y))}

    def _fit_one(self, net: GraphNet, graphs: list, yz: torch.Tensor, gen: torch.Generator) -> None:
        opt = torch.optim.Adam(net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        net.train()
        n = len(graphs)
        for _ in range(self.cfg.epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, self.cfg.batch_size):
                idx = perm[start:start + self.cfg.batch_size].tolist()
                loss = (net(batch_graphs([graphs[i] for i in idx])) - yz[idx]).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

    # --- prediction -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_graphs(self, g: GraphBatch, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        if self.cfg.uncertainty == "ensemble":
            for net in self.nets:
                net.eval()
            preds = torch.stack([net(g) for net in self.nets])
        else:
            # dropout masks from a fixed seed (reproducible predictions), without touching the caller's RNG
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                net = self.nets[0].train()
                preds = torch.stack([net(g) for _ in range(self.cfg.members)])
        preds = preds.double().numpy() * self.y_std + self.y_mean
        return preds.mean(0), preds.std(0)

    def predict(self, mols: Sequence[Chem.Mol], chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """mu, sigma (target units) for each molecule."""
        if len(mols) == 0:
            return np.zeros(0), np.zeros(0)
        mus, sigmas = [], []
        for start in range(0, len(mols), chunk):
            mu, sigma = self.predict_graphs(featurize(mols[start:start + chunk]))
            mus.append(mu)
            sigmas.append(sigma)
        return np.concatenate(mus), np.concatenate(sigmas)

    def acquisition(self, mols: Sequence[Chem.Mol]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mu, sigma, UCB) for each molecule."""
        mu, sigma = self.predict(mols)
        return mu, sigma, ucb(mu, sigma, self.cfg.kappa)

    # --- checkpoint -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"net{k}.{name}": t for k, net in enumerate(self.nets) for name, t in net.state_dict().items()}
        out["target.mean"] = torch.tensor([self.y_mean], dtype=torch.float64)
        out["target.std"] = torch.tensor([self.y_std], dtype=torch.float64)
        return out

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], cfg: ProxyConfig) -> ProxyEnsemble:
        model = cls(cfg)
        for k, net in enumerate(model.nets):
            prefix = f"net{k}."
            net.load_state_dict({n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)})
        model.y_mean, model.y_std = float(tensors["target.mean"][0]), float(tensors["target.std"][0])
        return model
