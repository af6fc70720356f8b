"""The sEH binding proxy of Bengio et al. (2021) as used by the `seh_frag` task, in plain PyTorch.

A message-passing network (NNConv with mean aggregation + GRU, 12 steps, Set2Set readout) scores an
RDKit molecule; its raw output, divided by 8 and clipped, is the `seh_frag` reward. This is a
re-implementation of the recursionpharma/gflownet port (`src/gflownet/models/bengio2021flow.py`,
MIT, Copyright (c) 2020 Recursion Pharmaceuticals) without torch_geometric: the graph ops are index
ops over a batch of molecules. The specification and 37 reference scores are in
`shared/data/seh_proxy/README.md`; the MIT-licensed weights are committed under
`data/external/seh_proxy/` with their licence and provenance.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rdkit import Chem
from rdkit.Chem.rdchem import BondType, HybridizationType

SEH_PROXY_SHA256 = "f76ab480b62e23dda04fd45fefe0e7ae2374b3f8c3f18fb7e00651cad05b9e1f"
SEH_PROXY_FILENAME = "bengio2021flow_proxy.pkl.gz"
# The file the recursionpharma loader downloads (byte-identical to the one we check against).
SEH_PROXY_URL = "https://github.com/GFNOrg/gflownet/raw/master/mols/data/pretrained_proxy/best_params.pkl.gz"
# Where the project keeps it: committed with its MIT licence (data/external/seh_proxy/README.md).
DEFAULT_PROXY_DIR = Path(__file__).resolve().parents[2] / "data" / "external" / "seh_proxy"

N_ATOM_FEATURES = 71
N_BOND_FEATURES = 4
MAX_ATOMIC_NUMBER = 56  # the atomic-number one-hot stops at Ba
HIDDEN = 64
CONV_STEPS = 12
SET2SET_STEPS = 3
_ELEMENT_CLASS = {"H": 0, "C": 1, "N": 2, "O": 3, "F": 4}  # anything else -> 5
_BOND_CLASS = {BondType.SINGLE: 0, BondType.DOUBLE: 1, BondType.TRIPLE: 2, BondType.AROMATIC: 3,
               BondType.UNSPECIFIED: 0}
_HYBRID_COLUMN = {HybridizationType.SP: 10, HybridizationType.SP2: 11, HybridizationType.SP3: 12}
# Arrays of the pickle that the per-molecule head uses (12-15 are an unused per-stem head).
_USED_ARRAYS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21)
_EXPECTED_SHAPES = {0: (64, 71), 1: (64,), 2: (64, 64), 3: (64,), 4: (128, 4), 5: (128,), 6: (4096, 128),
                    7: (4096,), 8: (192, 64), 9: (192, 64), 10: (192,), 11: (192,), 16: (256, 128),
                    17: (256, 64), 18: (256,), 19: (256,), 20: (1, 128), 21: (1,)}


class ProxyWeightsError(RuntimeError):
    """The proxy weights file is missing, not the expected file, or not a plain list of arrays."""


class UnsupportedMolecule(ValueError):
    """The molecule has something the proxy's featurization cannot encode (e.g. a dative bond)."""


# --- featurization ---------------------------------------------------------------------------------
def featurize(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Graph of a sanitized molecule: x (n, 71) float32, edge_index (2, E) int64 sorted by (source,
    target), edge_attr (E, 4) float32. Hydrogens stay implicit; a molecule without bonds gets one
    zero-feature self-loop on atom 0 (as the reference does)."""
    n = mol.GetNumAtoms()
    if n == 0:
        raise UnsupportedMolecule("the sEH proxy cannot score an empty molecule")
    x = np.zeros((n, N_ATOM_FEATURES), dtype=np.float32)
    for i, atom in enumerate(mol.GetAtoms()):
        z = atom.GetAtomicNum()
        if not 1 <= z <= MAX_ATOMIC_NUMBER:
            raise UnsupportedMolecule(
                f"{Chem.MolToSmiles(mol)}: atom {i} ({atom.GetSymbol()}, Z={z}) is outside the proxy's "
                f"atomic numbers 1..{MAX_ATOMIC_NUMBER}")
        x[i, _ELEMENT_CLASS.get(atom.GetSymbol(), 5)] = 1
        x[i, 9] = atom.GetIsAromatic()
        col = _HYBRID_COLUMN.get(atom.GetHybridization())
        if col is not None:
            x[i, col] = 1
        x[i, 13] = atom.GetTotalNumHs(includeNeighbors=True)
        x[i, 13 + z] = 1
    bonds = list(mol.GetBonds())
    if not bonds:
        return x, np.zeros((2, 1), dtype=np.int64), np.zeros((1, N_BOND_FEATURES), dtype=np.float32)
    src, dst, cls = [], [], []
    for bond in bonds:
        kind = _BOND_CLASS.get(bond.GetBondType())
        if kind is None:
            raise UnsupportedMolecule(
                f"{Chem.MolToSmiles(mol)}: bond {bond.GetIdx()} ({bond.GetBeginAtom().GetSymbol()}-"
                f"{bond.GetEndAtom().GetSymbol()}) has type {bond.GetBondType()}, which the sEH proxy "
                f"does not encode (single, double, triple, aromatic only)")
        a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        src += [a, b]
        dst += [b, a]
        cls += [kind, kind]
    src_a, dst_a, cls_a = np.array(src), np.array(dst), np.array(cls)
    order = np.lexsort((dst_a, src_a))
    edge_index = np.stack([src_a[order], dst_a[order]]).astype(np.int64)
    edge_attr = np.zeros((len(order), N_BOND_FEATURES), dtype=np.float32)
    edge_attr[np.arange(len(order)), cls_a[order]] = 1
    return x, edge_index, edge_attr


def _collate(graphs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """Concatenate graphs into one disjoint graph; `batch[i]` is the molecule of node i."""
    sizes = np.array([g[0].shape[0] for g in graphs])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    x = torch.from_numpy(np.concatenate([g[0] for g in graphs]))
    edge_index = torch.from_numpy(np.concatenate([g[1] + off for g, off in zip(graphs, offsets)], axis=1))
    edge_attr = torch.from_numpy(np.concatenate([g[2] for g in graphs]))
    batch = torch.from_numpy(np.repeat(np.arange(len(graphs)), sizes))
    return x, edge_index, edge_attr, batch


# --- the network ------------------------------------------------------------------------------------
def _act(t: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(t, 0.01)


class SEHProxy:
    """The pretrained proxy: `raw_scores(mols)` -> raw network outputs (float32)."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        for i, shape in _EXPECTED_SHAPES.items():
            if tuple(arrays[i].shape) != shape:
                raise ProxyWeightsError(f"array {i} has shape {arrays[i].shape}, expected {shape}")
        self.w = {i: torch.from_numpy(np.ascontiguousarray(arrays[i], dtype=np.float32))
                  for i in _USED_ARRAYS}

    # NNConv (PyG, aggr="mean"): out_i = mean_{j->i} x_j M(e_ji) + x_i R^T + b, R = array 2.
    def _edge_matrices(self, edge_attr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M(e) for the five possible bond features (the self-loop's zero vector, then the four
        one-hots) and each edge's index into them: the edge network runs 5 times, not E times."""
        if not bool(((edge_attr == 0) | (edge_attr == 1)).all() and (edge_attr.sum(1) <= 1).all()):
            raise ValueError("edge_attr rows must be one-hot or zero (as `featurize` makes them)")
        kinds = torch.cat([torch.zeros(1, N_BOND_FEATURES), torch.eye(N_BOND_FEATURES)])
        kind = torch.where(edge_attr.sum(1) > 0, edge_attr.argmax(1) + 1, 0)
        w = self.w
        hidden = _act(F.linear(kinds, w[4], w[5]))
        mats = F.linear(hidden, w[6], w[7]).view(-1, HIDDEN, HIDDEN)  # row-major (in x out)
        return mats, kind

    def _conv(self, x, src, dst, mats, kind, inv_deg):
        # x_j M(e) for every node and every edge kind at once, then pick each edge's row
        per_kind = torch.einsum("ni,kio->nko", x, mats)
        msg = per_kind[src, kind]
        agg = torch.zeros_like(x).index_add_(0, dst, msg) * inv_deg
        return agg + F.linear(x, self.w[2], self.w[3])

    def _gru(self, m: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        w = self.w
        gi = F.linear(m, w[8], w[10])
        gh = F.linear(h, w[9], w[11])
        i_r, i_z, i_n = gi.chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h

    def _set2set(self, x: torch.Tensor, batch: torch.Tensor, n_mols: int) -> torch.Tensor:
        w = self.w
        q_star = x.new_zeros(n_mols, 2 * HIDDEN)
        h = x.new_zeros(n_mols, HIDDEN)
        c = x.new_zeros(n_mols, HIDDEN)
        for _ in range(SET2SET_STEPS):
            gates = F.linear(q_star, w[16], w[18]) + F.linear(h, w[17], w[19])
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            e = (x * h[batch]).sum(dim=1)
            e_max = torch.full((n_mols,), -torch.inf).scatter_reduce(0, batch, e, "amax")
            a = torch.exp(e - e_max[batch])
            denom = torch.zeros(n_mols).index_add_(0, batch, a)
            a = a / denom[batch]
            r = torch.zeros(n_mols, HIDDEN).index_add_(0, batch, a[:, None] * x)
            q_star = torch.cat([h, r], dim=1)
        return q_star

    @torch.inference_mode()
    def forward_graphs(self, graphs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
        """Raw outputs for already featurized graphs (one batch)."""
        x, edge_index, edge_attr, batch = _collate(graphs)
        src, dst = edge_index[0], edge_index[1]
        mats, kind = self._edge_matrices(edge_attr)
        deg = torch.zeros(x.shape[0]).index_add_(0, dst, torch.ones(dst.shape[0]))
        inv_deg = (1.0 / deg.clamp(min=1))[:, None]
        out = _act(F.linear(x, self.w[0], self.w[1]))
        h = out
        for _ in range(CONV_STEPS):
            m = _act(self._conv(out, src, dst, mats, kind, inv_deg))
            h = out = self._gru(m, h)
        readout = self._set2set(out, batch, len(graphs))
        return F.linear(readout, self.w[20], self.w[21])[:, 0].numpy().astype(np.float32)

    def raw_scores(self, mols: Sequence[Chem.Mol], batch_size: int = 256) -> np.ndarray:
        """Raw proxy output per molecule, float32, in input order (batches of `batch_size`)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.empty(len(mols), dtype=np.float32)
        for start in range(0, len(mols), batch_size):
            chunk = mols[start:start + batch_size]
            out[start:start + len(chunk)] = self.forward_graphs([featurize(m) for m in chunk])
        return out

    def rewards(self, mols: Sequence[Chem.Mol], batch_size: int = 256) -> np.ndarray:
        """The `seh_frag` task reward of each molecule."""
        return seh_task_reward(self.raw_scores(mols, batch_size))


def seh_task_reward(raw: np.ndarray) -> np.ndarray:
    """`seh_frag` flat reward: NaN -> 0, divide by 8, clip to [1e-4, 100]."""
    raw = np.nan_to_num(np.asarray(raw, dtype=np.float32), nan=0.0)
    return np.clip(raw / 8, 1e-4, 100).astype(np.float32)


# --- loading ----------------------------------------------------------------------------------------
class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else (the file is untrusted input)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise ProxyWeightsError(
                f"proxy weights pickle refers to {module}.{name}; only numpy arrays are allowed")
        if module == "numpy.core.multiarray":  # numpy 2 moved it; avoid the deprecation shim
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path) -> None:
    """Fetch `url` to `dest` atomically and refuse it unless its sha256 is the expected one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        actual = _sha256(Path(tmp))
        if actual != SEH_PROXY_SHA256:
            raise ProxyWeightsError(f"download from {url}: sha256 {actual}, expected {SEH_PROXY_SHA256}")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_proxy_arrays(path: str | Path, sha256: str = SEH_PROXY_SHA256) -> list[np.ndarray]:
    """The 22 float32 arrays of the weights file, after checking its sha256."""
    path = Path(path)
    actual = _sha256(path)
    if actual != sha256:
        raise ProxyWeightsError(f"{path}: sha256 is {actual}, expected {sha256}; not the sEH proxy weights")
    try:
        with gzip.open(path, "rb") as fh:
            arrays = _ArraysOnlyUnpickler(io.BytesIO(fh.read())).load()
    except ProxyWeightsError as err:
        raise ProxyWeightsError(f"{path}: {err}") from None
    except (OSError, EOFError, pickle.UnpicklingError) as err:
        raise ProxyWeightsError(f"{path}: cannot read the weights pickle ({err})") from err
    if not (isinstance(arrays, list) and len(arrays) == 22
            and all(isinstance(a, np.ndarray) for a in arrays)):
        raise ProxyWeightsError(f"{path}: expected a list of 22 numpy arrays")
    return arrays


def load_seh_proxy(path: str | Path | None = None, *, cache_dir: str | Path | None = None,
                   url: str | None = None) -> SEHProxy:
    """Load the proxy from `path` (default: `cache_dir`, else the committed data/external/seh_proxy, file
    `bengio2021flow_proxy.pkl.gz`). If the file is absent and `url` is given, download it there first
    (atomically, sha256-checked); without `url` nothing is fetched."""
    if path is None:
        path = Path(cache_dir or DEFAULT_PROXY_DIR) / SEH_PROXY_FILENAME
    path = Path(path)
    if not path.exists():
        if url is None:
            raise ProxyWeightsError(
                f"sEH proxy weights not found at {path}; place {SEH_PROXY_FILENAME} "
                f"(sha256 {SEH_PROXY_SHA256}) there or pass url= (e.g. {SEH_PROXY_URL})")
        _download(url, path)
    return SEHProxy(read_proxy_arrays(path))
