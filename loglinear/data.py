"""The weighted preference dataset: one container for samples and exact populations.

A dataset is a finite weighted distribution over atoms z_i = (x_i, y_i, o_i):

* ``x`` (n, d): feature differences psi(s, a1) - psi(s, a2);
* ``y`` (n,): labels in {0, 1}, 1 when a1 is preferred;
* ``offset`` (n,): the reference log-ratio o_i = log pi_ref(a1|s) - log pi_ref(a2|s);
* ``weight`` (n,): nonnegative probabilities q_i summing to one.

An empirical sample has q = 1/n; an enumerated population has the exact probabilities.
Every loss and solver takes weights, so both go through one code path.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

WEIGHT_SUM_TOL = 1e-9


def _as_float_array(name: str, value, ndim: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite entries; all must be finite")
    return arr


def _as_index_array(name: str, value, n: int) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer indices")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must hold nonnegative indices, got min {arr.min()}")
    return arr


@dataclass(frozen=True, eq=False)
class PreferenceData:
    """A validated, immutable weighted preference dataset.

    Args:
        x: (n, d) feature differences.
        y: (n,) labels in {0, 1}.
        offset: (n,) reference log-ratios; zero by default.
        weight: (n,) nonnegative weights summing to one; uniform by default.
        state, a1, a2: optional (n,) integer indices, kept for diagnostics.
        normalize: rescale ``weight`` to sum to one instead of rejecting it.

    Raises:
        ValueError: on wrong shapes, NaN/inf, labels outside {0, 1}, negative weights,
            weights that do not sum to one (unless ``normalize=True``) or empty data.
    """

    x: np.ndarray
    y: np.ndarray
    offset: np.ndarray | None = None
    weight: np.ndarray | None = None
    state: np.ndarray | None = None
    a1: np.ndarray | None = None
    a2: np.ndarray | None = None
    normalize: InitVar[bool] = False

    def __post_init__(self, normalize: bool) -> None:
        x = _as_float_array("x", self.x, 2)
        n, d = x.shape
        if n == 0:
            raise ValueError("PreferenceData is empty: x has 0 rows; at least one pair is needed")
        if d == 0:
            raise ValueError("x has 0 columns; the feature dimension d must be at least 1")
        y = _as_float_array("y", self.y, 1)
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) to match x {x.shape}, got {y.shape}")
        if not np.all((y == 0) | (y == 1)):
            bad = np.unique(y[(y != 0) & (y != 1)])[:5]
            raise ValueError(f"labels y must be 0 or 1, found {bad.tolist()}")
        offset = np.zeros(n) if self.offset is None else _as_float_array("offset", self.offset, 1)
        if offset.shape != (n,):
            raise ValueError(f"offset must have shape ({n},), got {offset.shape}")
        if self.weight is None:
            weight = np.full(n, 1.0 / n)
        else:
            weight = _as_float_array("weight", self.weight, 1)
            if weight.shape != (n,):
                raise ValueError(f"weight must have shape ({n},), got {weight.shape}")
            if np.any(weight < 0):
                raise ValueError(
                    f"weights must be nonnegative, found min {weight.min():.3g}"
                )
            total = weight.sum()
            if total <= 0:
                raise ValueError("weights sum to 0; at least one pair needs positive weight")
            if normalize:
                weight = weight / total
            elif abs(total - 1.0) > WEIGHT_SUM_TOL:
                raise ValueError(
                    f"weights sum to {total:.12g}, not 1; pass normalize=True to rescale them"
                )
        for name, arr in (("x", x), ("y", y), ("offset", offset), ("weight", weight)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        for name in ("state", "a1", "a2"):
            arr = _as_index_array(name, getattr(self, name), n)
            if arr is not None:
                arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    # ------------------------------------------------------------------ shape
    @property
    def n(self) -> int:
        """Number of atoms (rows)."""
        return self.x.shape[0]

    @property
    def d(self) -> int:
        """Feature dimension."""
        return self.x.shape[1]

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"PreferenceData(n={self.n}, d={self.d}, label_mean={self.label_mean:.3f})"

    @property
    def label_mean(self) -> float:
        return float(self.weight @ self.y)

    @cached_property
    def sign(self) -> np.ndarray:
        """(n,) s_i = 2 y_i - 1 in {-1, +1}."""
        s = 2.0 * self.y - 1.0
        s.setflags(write=False)
        return s

    @cached_property
    def z(self) -> np.ndarray:
        """(n, d) signed features z_i = (2 y_i - 1) x_i."""
        z = self.sign[:, None] * self.x
        z.setflags(write=False)
        return z

    @property
    def has_actions(self) -> bool:
        return self.state is not None and self.a1 is not None and self.a2 is not None

    # ------------------------------------------------------------ transforms
    def with_weight(self, weight, *, normalize: bool = False) -> PreferenceData:
        """The same atoms with new weights."""
        return replace(self, weight=weight, normalize=normalize)

    def subset(self, index) -> PreferenceData:
        """Rows ``index`` (boolean mask or integer indices), weights renormalised."""
        idx = np.asarray(index)
        pick = (lambda a: None if a is None else a[idx])
        return PreferenceData(
            self.x[idx], self.y[idx], self.offset[idx], self.weight[idx],
            pick(self.state), pick(self.a1), pick(self.a2), normalize=True,
        )

    def flip(self) -> PreferenceData:
        """Swap a1 and a2 in every pair and flip the label: an equivalent dataset."""
        return PreferenceData(
            -self.x, 1.0 - self.y, -self.offset, self.weight, self.state, self.a2, self.a1
        )

    def centered(self) -> PreferenceData:
        """The same pairs with zero offset (the w = theta - theta_ref parameterisation)."""
        return replace(self, offset=np.zeros(self.n))

    def compress(self) -> PreferenceData:
        """Merge identical (x, y, offset) rows, adding their weights.

        A sample of n draws from a finite population is a multinomial count over its
        atoms, so a compressed fit costs the same at n = 10^6 as at n = 10^3. The
        diagnostic indices survive only where they are constant within each merged group.
        """
        key = np.column_stack([self.x, self.y, self.offset])
        uniq, inverse = np.unique(key, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        k = uniq.shape[0]
        weight = np.bincount(inverse, weights=self.weight, minlength=k)

        def merge(a):
            if a is None:
                return None
            first = np.full(k, -1, dtype=np.int64)
            first[inverse[::-1]] = a[::-1]
            return first if np.array_equal(first[inverse], a) else None

        return PreferenceData(
            uniq[:, : self.d], uniq[:, self.d], uniq[:, self.d + 1], weight,
            merge(self.state), merge(self.a1), merge(self.a2), normalize=True,
        )

    def drop_zero_weight(self) -> PreferenceData:
        """Remove rows with zero weight."""
        keep = self.weight > 0
        return self if keep.all() else self.subset(keep)

    @staticmethod
    def concat(parts, *, weights=None) -> PreferenceData:
        """Mixture of datasets: part k gets total mass ``weights[k]`` (default by size)."""
        parts = list(parts)
        if not parts:
            raise ValueError("concat needs at least one dataset")
        if weights is None:
            weights = np.array([p.n for p in parts], dtype=float)
        weights = np.asarray(weights, dtype=float) / np.sum(weights)
        has = all(p.has_actions for p in parts)
        cat = (lambda name: np.concatenate([getattr(p, name) for p in parts]) if has else None)
        return PreferenceData(
            np.vstack([p.x for p in parts]),
            np.concatenate([p.y for p in parts]),
            np.concatenate([p.offset for p in parts]),
            np.concatenate([w * p.weight for w, p in zip(weights, parts)]),
            cat("state"), cat("a1"), cat("a2"), normalize=True,
        )

    # --------------------------------------------------------------------- io
    def to_dict(self) -> dict[str, np.ndarray]:
        out = {"x": self.x, "y": self.y, "offset": self.offset, "weight": self.weight}
        for name in ("state", "a1", "a2"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def save(self, path) -> Path:
        """Write the dataset to ``.npz`` (compressed)."""
        path = Path(path)
        np.savez_compressed(path, **self.to_dict())
        return path if path.suffix == ".npz" else path.with_suffix(path.suffix + ".npz")

    @classmethod
    def load(cls, path, *, normalize: bool = True) -> PreferenceData:
        """Read a dataset from ``.npz`` (as written by :meth:`save`) or ``.parquet``.

        A parquet file holds columns ``x0..x{d-1}``, ``y`` and optionally ``offset``,
        ``weight``, ``state``, ``a1``, ``a2``.
        """
        path = Path(path)
        if path.suffix == ".parquet":
            import pandas as pd

            df = pd.read_parquet(path)
            xcols = sorted((c for c in df.columns if c.startswith("x") and c[1:].isdigit()),
                           key=lambda c: int(c[1:]))
            if not xcols or "y" not in df:
                raise ValueError(f"{path}: parquet needs columns x0..x{{d-1}} and y")
            cols = {c: df[c].to_numpy() for c in ("offset", "weight", "state", "a1", "a2")
                    if c in df}
            return cls(df[xcols].to_numpy(), df["y"].to_numpy(), normalize=normalize, **cols)
        with np.load(path) as f:
            return cls(**{k: f[k] for k in f.files}, normalize=normalize)
