"""Image classification data as (x float32 (n, c, h, w), y int64 (n,)) per split.

digits     scikit-learn's 8x8 handwritten digits (ships with the package: offline), split at random.
synthetic  10 classes of smooth random 1-channel prototypes, each example shifted by a few pixels and
           drowned in Gaussian noise: a task that needs some capacity but not much data.
cifar10    user-supplied files in one of three layouts (nothing is downloaded):
             npz     one .npz with x_train, y_train, x_test, y_test; x uint8 (n, 32, 32, 3) or (n, 3, 32, 32)
             folder  torchvision ImageFolder layout: <path>/{train,test}/<class name>/<image>.png,
                     classes numbered in sorted order of their folder names
             pickle  torchvision's CIFAR10 root: <path>/cifar-10-batches-py/{data_batch_1..5,test_batch}

The data stage then cuts every train split into train and val (a random `val_fraction` of it, seeded by
`data_seed`; split_validation): validation is taken from the training data, never from test.
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np

Splits = dict[str, tuple[np.ndarray, np.ndarray]]


class DatasetError(ValueError):
    """User-supplied data is missing or malformed; the message names the params key to fix."""


def digits(cfg: Mapping) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:, None] / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(cfg["data_seed"]).permutation(len(y))
    n_test = round(cfg["test_fraction"] * len(y))
    return {"train": (x[order[n_test:]], y[order[n_test:]]), "test": (x[order[:n_test]], y[order[:n_test]])}


def smooth_field(rng: np.random.Generator, size: int, passes: int = 2) -> np.ndarray:
    f = rng.normal(size=(size, size))
    for _ in range(passes):   # cheap blur: average with the four neighbours
        f = (f + np.roll(f, 1, 0) + np.roll(f, -1, 0) + np.roll(f, 1, 1) + np.roll(f, -1, 1)) / 5
    return f / f.std()


def synthetic(cfg: Mapping) -> Splits:
    rng = np.random.default_rng(cfg["data_seed"])
    size, k = cfg["size"], cfg["n_classes"]
    protos = np.stack([smooth_field(rng, size) for _ in range(k)])

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(k, size=n)
        shifts = rng.integers(-cfg["shift"], cfg["shift"] + 1, size=(n, 2))
        x = np.stack([np.roll(protos[c], tuple(s), axis=(0, 1)) for c, s in zip(y, shifts)])
        x = x * rng.uniform(0.5, 1.5, size=(n, 1, 1)) + cfg["noise"] * rng.normal(size=x.shape)
        return x[:, None].astype(np.float32), y.astype(np.int64)

    return {"train": sample(cfg["n_train"]), "test": sample(cfg["n_test"])}


def _hwc_to_chw(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim != 4:
        raise DatasetError(f"{where}: expected images of shape (n, 32, 32, 3) or (n, 3, 32, 32), got {x.shape}")
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def _cifar_npz(path: Path, key: str) -> Splits:
    with np.load(path) as z:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
        if missing:
            raise DatasetError(f"{key} = {path}: the .npz lacks array(s) {sorted(missing)}")
        return {split: (_hwc_to_chw(z[f"x_{split}"], f"{key} = {path}"), z[f"y_{split}"].astype(np.int64))
                for split in ("train", "test")}


def _cifar_folder(path: Path, key: str) -> Splits:
    from PIL import Image

    out = {}
    for split in ("train", "test"):
        root = path / split
        classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if not classes:
            raise DatasetError(f"{key} = {path}: expected class folders under {root}")
        xs, ys = [], []
        for label, name in enumerate(classes):
            for f in sorted((root / name).iterdir()):
                xs.append(np.asarray(Image.open(f).convert("RGB")))
                ys.append(label)
        out[split] = (_hwc_to_chw(np.stack(xs), f"{key} = {path}"), np.asarray(ys, dtype=np.int64))
    return out


def _cifar_pickle(path: Path, key: str) -> Splits:
    base = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    files = {"train": [base / f"data_batch_{i}" for i in range(1, 6)], "test": [base / "test_batch"]}
    out = {}
    for split, paths in files.items():
        lost = [p.name for p in paths if not p.exists()]
        if lost:
            raise DatasetError(f"{key} = {path}: missing {lost} in {base}")
        xs, ys = [], []
        for p in paths:
            with open(p, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out


def cifar10(cfg: Mapping, key: str = "demp.datasets.cifar10") -> Splits:
    """`key` is the params key of this dataset, so errors say which key points at the wrong place."""
    path = Path(cfg["path"])
    if not path.exists():
        raise DatasetError(f"{key}.path = '{cfg['path']}' does not exist: put CIFAR-10 there "
                           f"(format '{cfg['format']}', see stages/demp/datasets.py) or change the key")
    loader = {"npz": _cifar_npz, "folder": _cifar_folder, "pickle": _cifar_pickle}[cfg["format"]]
    splits = loader(path, f"{key}.path")
    return {split: ((x / 255.0).astype(np.float32), y) for split, (x, y) in splits.items()}


def load(kind: str, cfg: Mapping, key: str) -> Splits:
    if kind == "digits":
        return digits(cfg)
    if kind == "synthetic":
        return synthetic(cfg)
    return cifar10(cfg, key)


def split_validation(splits: Splits, fraction: float, seed: int) -> Splits:
    """Hold out a random `fraction` of the train split as "val" (disjoint from train and test): the
    sweep's choices (lambda_max) are read on it, and test is only reported."""
    x, y = splits["train"]
    n_val = round(fraction * len(y))
    if not 0 < n_val < len(y):
        raise DatasetError(f"val_fraction {fraction} of {len(y)} training examples leaves an empty split")
    order = np.random.default_rng([seed, 1]).permutation(len(y))   # its own stream: not the data's
    val, train = order[:n_val], order[n_val:]
    return {**splits, "train": (x[train], y[train]), "val": (x[val], y[val])}


def standardize(splits: Splits) -> Splits:
    """Per-channel mean and std of the train split, applied to every split."""
    x = splits["train"][0]
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = x.std(axis=(0, 2, 3), keepdims=True) + 1e-8
    return {s: (((xs - mean) / std).astype(np.float32), ys) for s, (xs, ys) in splits.items()}
