"""Episode-end reward of the LambdaZero policy: a binding term times two soft property gates.

    R(x) = B(x) * s(QED(x); qed_c0, qed_c1) * s(SA(x); sa_c0, sa_c1)
    s(v; c0, c1) = clip((v - c0) / (c1 - c0), 0.01, 1)          (stages.chem.properties.soft_gate)

QED: higher is better, default ramp 0.2 -> 0.5 (the method note). SA score (1 easy .. 10 hard): lower is
better, so c0 > c1; default ramp 6 -> 3 (our choice: SA >= 6 is "hard to make" (Ertl & Schuffenhauer's
split of catalogue vs. complex natural products is around 6) and fragment-assembled molecules sit at
2-4, so the gate only bites on the odd, strained or stereo-rich assemblies).

Binding term B, two choices (param `reward`):
  docking_proxy  B = dock_term(a) = max((a - dock_offset) / dock_scale, 0.01), where a = mu + kappa sigma
                 is the proxy's UCB of -score (kcal/mol, larger = better). Linear in the predicted
                 binding energy, floored at 0.01 like the gates so no molecule gets zero reward (PPO
                 normalises advantages, so only the ratios matter); default offset 4 / scale 4 maps
                 -8 kcal/mol to 1 and anything above -4 kcal/mol (weak or clashing) to the floor.
  seh_proxy      B = the published `seh_frag` reward of the Bengio et al. (2021) sEH proxy
                 (raw / 8, clipped to [1e-4, 100]; stages.chem.seh_proxy).

Size correction (params `size_exponent` alpha, `size_reference` N_ref): Vina scores grow with the number
of heavy atoms N, so a policy paid raw score builds the largest molecules the MDP allows. With alpha > 0
the binding value is multiplied by (N_ref / N)^alpha before the binding term: for docking_proxy
a -> a (N_ref / N)^alpha, so alpha = 1 pays ligand efficiency a / N (scaled to the score a molecule of
N_ref heavy atoms with that efficiency would have) and alpha = 0 is the raw score; in between, molecules
larger than N_ref must earn their extra atoms (Reynolds et al. 2007 found the best achievable affinity per
atom falls with size, which is why fit-quality scores divide by a power of N below 1). For seh_proxy the
binding term itself is multiplied by the factor.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rdkit import Chem

from stages.chem.properties import qed, sa_score, soft_gate


@dataclass(frozen=True)
class RewardConfig:
    """Reward parameters (params `lambdazero.reward`)."""

    kind: str = "docking_proxy"
    """`docking_proxy` (UCB of the docking proxy) or `seh_proxy` (published sEH proxy)."""
    qed_c0: float = 0.2
    """QED gate: 0.01 at or below this."""
    qed_c1: float = 0.5
    """QED gate: 1 at or above this."""
    sa_c0: float = 6.0
    """SA gate: 0.01 at or above this (SA: lower is easier to make)."""
    sa_c1: float = 3.0
    """SA gate: 1 at or below this."""
    dock_offset: float = 4.0
    """dock_term: acquisition value (-score, kcal/mol) that maps to 0."""
    dock_scale: float = 4.0
    """dock_term: kcal/mol above the offset that map to 1."""
    seh_weights: str = ""
    """Path of the sEH proxy weights (bengio2021flow_proxy.pkl.gz); only read when kind = seh_proxy."""
    size_exponent: float = 0.0
    """alpha of the size correction (N_ref / N)^alpha on the binding value; 0 = raw score, 1 = ligand efficiency."""
    size_reference: float = 25.0
    """N_ref: heavy atoms at which the size correction is 1."""

    @classmethod
    def from_params(cls, p: dict) -> RewardConfig:
        return cls(kind=p["kind"], qed_c0=p["qed_gate"][0], qed_c1=p["qed_gate"][1],
                   sa_c0=p["sa_gate"][0], sa_c1=p["sa_gate"][1], dock_offset=p["dock_offset"],
                   dock_scale=p["dock_scale"], seh_weights=p.get("seh_weights", ""),
                   size_exponent=p.get("size_exponent", 0.0), size_reference=p.get("size_reference", 25.0))


def dock_term(acquisition: np.ndarray, offset: float, scale: float) -> np.ndarray:
    """Positive binding term from an acquisition value of -score (kcal/mol): max((a - offset)/scale, 0.01)."""
    if scale <= 0:
        raise ValueError(f"dock_scale must be > 0, got {scale}")
    return np.maximum((np.asarray(acquisition, dtype=np.float64) - offset) / scale, 0.01)


def heavy_atoms(mols: Sequence[Chem.Mol]) -> np.ndarray:
    """Heavy (non-hydrogen) atoms of each molecule."""
    return np.array([m.GetNumHeavyAtoms() for m in mols], dtype=np.float64)


def size_factor(n_heavy: np.ndarray, exponent: float, reference: float) -> np.ndarray:
    """(reference / N)^exponent, the size correction of the binding value (1 when exponent = 0)."""
    if reference <= 0:
        raise ValueError(f"size_reference must be > 0, got {reference}")
    return (reference / np.maximum(np.asarray(n_heavy, dtype=np.float64), 1.0)) ** exponent


def gates(qed_values: np.ndarray, sa_values: np.ndarray, cfg: RewardConfig) -> np.ndarray:
    """s(QED; qed_c0, qed_c1) * s(SA; sa_c0, sa_c1)."""
    return (np.asarray(soft_gate(np.asarray(qed_values, float), cfg.qed_c0, cfg.qed_c1))
            * np.asarray(soft_gate(np.asarray(sa_values, float), cfg.sa_c0, cfg.sa_c1)))


def properties(mols: Sequence[Chem.Mol]) -> tuple[np.ndarray, np.ndarray]:
    """QED and SA score of each molecule."""
    return (np.array([qed(m) for m in mols], dtype=np.float64),
            np.array([sa_score(m) for m in mols], dtype=np.float64))


class MoleculeReward:
    """R(x) for a list of RDKit molecules; `components` keeps the parts of the last call for logging.

    `proxy` (a ProxyEnsemble) is needed for docking_proxy and may be swapped between calls (active
    learning refits it); the sEH model is loaded once."""

    def __init__(self, cfg: RewardConfig, proxy=None):
        if cfg.kind not in ("docking_proxy", "seh_proxy"):
            raise ValueError(f"reward kind must be 'docking_proxy' or 'seh_proxy', got {cfg.kind!r}")
        self.cfg, self.proxy, self._seh = cfg, proxy, None
        if cfg.kind == "seh_proxy":
            from stages.chem.seh_proxy import load_seh_proxy

            if not cfg.seh_weights:
                raise ValueError("reward kind seh_proxy needs lambdazero.reward.seh_weights (a path)")
            self._seh = load_seh_proxy(cfg.seh_weights)
        self.components: dict[str, np.ndarray] = {}

    def binding(self, mols: Sequence[Chem.Mol]) -> dict[str, np.ndarray]:
        factor = size_factor(heavy_atoms(mols), self.cfg.size_exponent, self.cfg.size_reference)
        if self.cfg.kind == "seh_proxy":
            from stages.chem.seh_proxy import seh_task_reward

            term = seh_task_reward(self._seh.raw_scores(list(mols))).astype(np.float64)
            return {"binding": term * factor, "size_factor": factor}
        if self.proxy is None:
            raise RuntimeError("docking_proxy reward called before a proxy was set")
        mu, sigma, acq = self.proxy.acquisition(list(mols))
        return {"binding": dock_term(acq * factor, self.cfg.dock_offset, self.cfg.dock_scale),
                "proxy_mu": mu, "proxy_sigma": sigma, "acquisition": acq, "size_factor": factor}

    def __call__(self, mols: Sequence[Chem.Mol]) -> np.ndarray:
        if len(mols) == 0:
            return np.zeros(0)
        q, sa = properties(mols)
        comp = self.binding(mols)
        comp.update(qed=q, sa=sa, gate=gates(q, sa, self.cfg), heavy_atoms=heavy_atoms(mols))
        comp["reward"] = comp["binding"] * comp["gate"]
        self.components = comp
        return comp["reward"]
