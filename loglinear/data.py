"""The weighted preference dataset: one container for samples and exact populations.

A dataset is a finite weighted distribution over atoms z_i = (x_i, y_i, o_i):

* ``x`` (n, d): feature differences psi(s, a1) - psi(s, a2);
* ``y`` (n,): labels in {0, 1}, 1 when a1 is preferred;
* ``offset`` (n,): the reference log-ratio o_i = log pi_ref(a1|s) - log pi_ref(a2|s);
* ``weight`` (n,): nonnegative probabilities q_i summing to one.

An empirical sample has q = 1/n; an enumerated population has the exact probabilities.
Every loss and solver takes weights, so both go through one code path.

Feature scale. The fits and the robust solvers stop on absolute tolerances (on gradients,
margins and linear-programming residuals), while the parameter scales as 1/|x|: the
margin beta x.theta is what the model sees. So the scale of the features is part of the
input's validity: ``PreferenceData`` accepts max_ij |x_ij| in :data:`FEATURE_SCALE_RANGE`
= [1e-8, 1e12] (or exactly 0, a dataset of ties) and raises otherwise, saying by how much
to divide. Outside it a solver would fail with an unrelated message (an LP "model error"
at 1e15, a spurious separable-data error at 1e-100). The upper end is wide because the
W1 worst case can move atoms far (a worst case is itself a ``PreferenceData``); fits on
user data are best conditioned with max |x| near 1.
Dividing x by s multiplies theta by s (and a Wasserstein radius, measured in feature
units, by 1/s); KL radii and the margins are unchanged.

Randomness: functions that draw take a ``numpy.random.Generator``; :func:`as_generator`
also accepts an integer seed (or a ``SeedSequence``), which is what a user types.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

__all__ = ["PreferenceData", "FEATURE_SCALE_RANGE", "WEIGHT_SUM_TOL", "as_generator",
           "require_data"]

WEIGHT_SUM_TOL = 1e-9
FEATURE_SCALE_RANGE = (1e-8, 1e12)
"""Allowed max |x| of a dataset's features (0 is allowed too); see the module docstring."""


def as_generator(seed_or_rng) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator (returned as is), an integer seed
    (>= 0) or a ``numpy.random.SeedSequence``.

    ``None``, floats, booleans and the legacy ``RandomState`` are refused: a run must be
    reproducible from what was passed, and the global state is never used.
    """
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if isinstance(seed_or_rng, np.random.SeedSequence):
        return np.random.default_rng(seed_or_rng)
    if isinstance(seed_or_rng, (int, np.integer)) and not isinstance(seed_or_rng, bool):
        if seed_or_rng < 0:
            raise ValueError(f"a seed must be a nonnegative integer, got {seed_or_rng}")
        return np.random.default_rng(int(seed_or_rng))
    raise TypeError("expected a numpy.random.Generator or an integer seed (e.g. 0), got "
                    f"{type(seed_or_rng).__name__}")


def require_data(obj, name: str = "data") -> PreferenceData:
    """Return ``obj`` if it is a :class:`PreferenceData`, else raise a TypeError naming
    ``name``, the type found and how to build one."""
    if isinstance(obj, PreferenceData):
        return obj
    raise TypeError(f"{name} must be a loglinear.PreferenceData, got {type(obj).__name__}; "
                    "build one with PreferenceData(x, y, offset=..., weight=...) or "
                    "PreferenceData.load(path)")


def _normalised(weight: np.ndarray) -> np.ndarray:
    """weight / weight.sum() without overflow: the sum of values near 1e308 is inf, and
    dividing by it gives zeros, so divide by the largest entry first (exact up to one
    rounding per entry)."""
    top = weight.max()
    scaled = weight / top
    return scaled / scaled.sum()


def _total(weight: np.ndarray) -> float:
    """The sum of nonnegative weights, inf (without a warning) when it overflows."""
    top = float(weight.max())
    return top * float((weight / top).sum()) if top > 0 else 0.0


def _check_scale(x: np.ndarray) -> None:
    scale = float(np.abs(x).max())
    lo, hi = FEATURE_SCALE_RANGE
    if scale != 0.0 and not lo <= scale <= hi:
        raise ValueError(
            f"features x have max |x| = {scale:.3g}, outside the supported range "
            f"[{lo:g}, {hi:g}] (the solvers' tolerances are absolute; theta scales as 1/|x|); "
            f"divide x by {scale:.3g}, which multiplies theta by the same factor")


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
        _check_scale(x)
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
            if weight.max() <= 0:
                raise ValueError("weights sum to 0; at least one pair needs positive weight")
            if normalize:
                weight = _normalised(weight)
            elif abs((total := _total(weight)) - 1.0) > WEIGHT_SUM_TOL:
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
    def feature_scale(self) -> float:
        """max_ij |x_ij|, 0 for a dataset of ties (see :data:`FEATURE_SCALE_RANGE`)."""
        return float(np.abs(self.x).max())

    def scaled(self, factor: float) -> PreferenceData:
        """The same pairs with features ``factor * x``: the margins of theta / factor are
        those of theta on this dataset, so a solver may work at unit scale,
        ``data.scaled(1 / data.feature_scale)``, and divide its theta by the scale."""
        factor = float(factor)
        if not (np.isfinite(factor) and factor > 0):
            raise ValueError(f"factor must be a finite number > 0, got {factor}")
        return replace(self, x=self.x * factor)

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
        weights = np.asarray(weights, dtype=float)
        if weights.shape != (len(parts),) or not np.all(np.isfinite(weights)) \
                or np.any(weights < 0) or weights.max() <= 0:
            raise ValueError(f"concat weights must be {len(parts)} finite nonnegative numbers "
                             f"with a positive one, got {weights.tolist()}")
        weights = _normalised(weights)
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

    def to_frame(self):
        """A pandas DataFrame with columns ``x0..x{d-1}``, ``y``, ``offset``, ``weight``
        (and ``state``, ``a1``, ``a2`` when present): the parquet layout."""
        import pandas as pd

        cols = {f"x{j}": self.x[:, j] for j in range(self.d)}
        cols |= {k: v for k, v in self.to_dict().items() if k != "x"}
        return pd.DataFrame(cols)

    def save(self, path) -> Path:
        """Write the dataset to ``path`` and return the path written.

        ``.npz`` (compressed numpy) or ``.parquet`` (the columns of :meth:`to_frame`; needs
        pandas with pyarrow). A path without a suffix gets ``.npz``; any other suffix is
        refused rather than silently renamed.
        """
        path = Path(path)
        if path.suffix == ".parquet":
            self.to_frame().to_parquet(path, index=False)
            return path
        if path.suffix not in (".npz", ""):
            raise ValueError(f"PreferenceData.save writes .npz or .parquet files, got "
                             f"{path.name!r} (suffix {path.suffix!r})")
        path = path.with_suffix(".npz") if path.suffix == "" else path
        np.savez_compressed(path, **self.to_dict())
        return path

    @classmethod
    def load(cls, path, *, normalize: bool = True) -> PreferenceData:
        """Read a dataset from ``.npz`` (as written by :meth:`save`) or ``.parquet``.

        A parquet file holds columns ``x0..x{d-1}``, ``y`` and optionally ``offset``,
        ``weight``, ``state``, ``a1``, ``a2``.
        """
        path = Path(path)
        if path.suffix not in (".npz", ".parquet"):
            raise ValueError(f"PreferenceData.load reads .npz or .parquet files, got "
                             f"{path.name!r} (suffix {path.suffix!r})")
        if path.suffix == ".parquet":
            import pandas as pd

            df = pd.read_parquet(path)
            xcols = sorted((c for c in df.columns if c.startswith("x") and c[1:].isdigit()),
                           key=lambda c: int(c[1:]))
            if not xcols or "y" not in df:
                raise ValueError(f"{path}: parquet needs columns x0..x{{d-1}} and y; found "
                                 f"{list(df.columns)[:20]}")
            cols = {c: df[c].to_numpy() for c in ("offset", "weight", "state", "a1", "a2")
                    if c in df}
            return cls(df[xcols].to_numpy(), df["y"].to_numpy(), normalize=normalize, **cols)
        with np.load(path) as f:
            found = set(f.files)
            allowed = {"x", "y", "offset", "weight", "state", "a1", "a2"}
            if not {"x", "y"} <= found or not found <= allowed:
                raise ValueError(f"{path}: expected arrays x, y and optionally offset, weight, "
                                 f"state, a1, a2; found {sorted(found)}")
            return cls(**{k: f[k] for k in f.files}, normalize=normalize)
