"""Coverage, estimation errors and the theory's constants (paper.md section 5)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .data import PreferenceData


class Coverage(NamedTuple):
    """Sigma = sum_i q_i x_i x_i^T with its spectrum (ascending) and eigenvectors."""

    sigma: np.ndarray
    lambda_min: float
    eigvals: np.ndarray
    eigvecs: np.ndarray


def coverage(data: PreferenceData) -> Coverage:
    r"""The coverage matrix Sigma_P = E_P[x x^T] of a weighted dataset and lambda_min.

    Assumption 2 of the paper asks lambda_min(Sigma_P) >= lambda > 0.
    """
    sigma = (data.x * data.weight[:, None]).T @ data.x
    sigma = 0.5 * (sigma + sigma.T)
    vals, vecs = np.linalg.eigh(sigma)
    return Coverage(sigma, float(vals[0]), vals, vecs)


def estimation_error(theta_hat, target) -> float:
    """||theta_hat - target||_2."""
    return float(np.linalg.norm(np.asarray(theta_hat, float) - np.asarray(target, float)))
