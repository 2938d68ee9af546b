r"""Finite log-linear environments in which every population quantity is exact.

States s ~ mu, actions a in {0..A-1}, features psi(s, a) in R^d with ||psi|| <= 1,
policies pi_theta(a|s) proportional to exp(theta . psi(s, a)), a sampling policy pi_o
for both responses, and Bradley-Terry labels y ~ Bernoulli(sigma(r(s,a1) - r(s,a2)))
(docs/theory.md §1.2, §1.4). With a linear reward r = omega . psi, DPO's population optimum
is theta* = theta_ref + omega / beta.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from scipy.special import expit, log_softmax, softmax

from ._checks import count as _count
from ._checks import finite as _finite
from ._checks import finite_scalar as _finite_scalar
from .data import PreferenceData, as_generator, require_data
from .estimation import Coverage, coverage
from .rewards import mix_rewards  # noqa: F401  (re-exported: its earlier home)

FEATURE_NORM_TOL = 1e-9
PROB_SUM_TOL = 1e-9


class PolicyDivergence(NamedTuple):
    """E_{s ~ mu} KL(pi_p(.|s) || pi_q(.|s)) and E_{s ~ mu} TV(pi_p(.|s), pi_q(.|s))."""

    kl: float
    tv: float


class PolicyValue(NamedTuple):
    """Evaluation of a policy: E[r], KL(pi || pi_ref) and E[r] - beta KL, averaged over mu."""

    reward: float
    kl: float
    objective: float


@dataclass(frozen=True, eq=False)
class LogLinearEnv:
    """A finite log-linear preference environment.

    Args:
        features: (S, A, d) psi(s, a), each of norm at most 1.
        state_dist: (S,) mu, a probability vector.
        sampling_policy: (S, A) pi_o(a|s), rows summing to one.
        theta_ref: (d,) the reference parameter (pi_ref = pi_{theta_ref}).
        beta: the DPO temperature, > 0.
        omega: (d,) linear reward weights, or None when ``reward_table`` is given.
        reward_table: (S, A) an arbitrary reward, or None for the linear reward.
        base_logits: (S, A) a fixed per-(state, action) logit b(s, a) added to every policy,
            pi_theta(a|s) proportional to exp(b(s, a) + theta . psi(s, a)) (default 0). It
            carries a reference that is not log-linear in psi, e.g. a language model's
            log-probabilities of a finite set of completions; it cancels from every pair's
            log-ratio against the reference, so the data and the losses never see it.
    """

    features: np.ndarray
    state_dist: np.ndarray
    sampling_policy: np.ndarray
    theta_ref: np.ndarray
    beta: float
    omega: np.ndarray | None = None
    reward_table: np.ndarray | None = None
    base_logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        psi = np.asarray(self.features, dtype=float)
        if psi.ndim != 3:
            raise ValueError(f"features must have shape (S, A, d), got {psi.shape}")
        S, A, d = psi.shape
        if A < 2:
            raise ValueError(f"need at least 2 actions per state, got {A}")
        psi = _finite("features", psi)
        norms = np.linalg.norm(psi, axis=-1)
        if norms.max() > 1 + FEATURE_NORM_TOL:
            raise ValueError(f"feature norms must be finite and <= 1, max is {norms.max():.6g}")
        # NaN passes every comparison, so finiteness is checked first, by name
        mu = _finite("state_dist", self.state_dist, (S,))
        if np.any(mu < 0) or abs(mu.sum() - 1) > PROB_SUM_TOL:
            raise ValueError(f"state_dist must be a probability vector of length {S} "
                             f"(nonnegative, summing to 1; sums to {mu.sum():.12g})")
        pi_o = _finite("sampling_policy", self.sampling_policy, (S, A))
        if np.any(pi_o < 0) or np.max(np.abs(pi_o.sum(1) - 1)) > PROB_SUM_TOL:
            raise ValueError(f"sampling_policy must be (S, A) = {(S, A)}, nonnegative, with "
                             "rows summing to 1")
        theta_ref = _finite("theta_ref", self.theta_ref, (d,))
        beta = _finite_scalar("beta", self.beta)
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if (self.omega is None) == (self.reward_table is None):
            raise ValueError("give exactly one of omega (linear reward) and reward_table")
        omega = None if self.omega is None else _finite("omega", self.omega, (d,))
        table = (None if self.reward_table is None
                 else _finite("reward_table", self.reward_table, (S, A)))
        base = (None if self.base_logits is None
                else _finite("base_logits", self.base_logits, (S, A)))
        with np.errstate(over="ignore"):
            if omega is not None and not np.all(np.isfinite(theta_ref + omega / beta)):
                raise ValueError(f"theta* = theta_ref + omega / beta overflows (beta = {beta:g}, "
                                 f"max |omega| = {np.abs(omega).max():.3g}); rescale omega")
        for name, arr in (("features", psi), ("state_dist", mu), ("sampling_policy", pi_o),
                          ("theta_ref", theta_ref), ("omega", omega), ("reward_table", table),
                          ("base_logits", base)):
            if arr is not None:
                arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "beta", beta)

    # ------------------------------------------------------------ constructors
    @classmethod
    def random(cls, rng: np.random.Generator | int, *, n_states: int = 8, n_actions: int = 6,
               dim: int = 4, beta: float = 1.0, concentration: float = 0.0,
               spectrum=None, reward_scale: float = 2.0, ref_scale: float = 0.0,
               state_dist: str = "uniform", avoid: float = 0.0, avoid_direction=None
               ) -> LogLinearEnv:
        """A random environment.

        The draws come in a fixed order (features, state distribution, sampling logits,
        omega, theta_ref, then the avoided direction when one is drawn), so environments
        built from the same seed with different ``concentration`` or ``avoid`` share their
        features, reward and theta* exactly and differ only in how they sample.

        Args:
            rng: the source of randomness: a Generator or an integer seed.
            n_states, n_actions, dim: S, A, d.
            beta: DPO temperature.
            concentration: gamma >= 0 in pi_o proportional to exp(gamma g(s, a)) with
                g ~ N(0, 1); 0 is uniform sampling (best coverage), large values
                concentrate pi_o on few actions and shrink lambda_min(Sigma).
            spectrum: optional (d,) per-coordinate feature scales (controls the geometry
                of Sigma; a small entry makes that direction poorly covered).
            reward_scale: ||omega||.
            ref_scale: ||theta_ref|| (0 gives a uniform reference policy).
            state_dist: ``"uniform"`` or ``"dirichlet"``.
            avoid: gamma >= 0 of :meth:`avoiding` (0: no direction avoided). The data then
                explore the direction ``avoid_direction`` less as gamma grows, while the
                features, reward and theta* stay those of ``avoid = 0``.
            avoid_direction: (d,) the direction v to avoid; by default a uniformly random
                unit vector, drawn last (and only when ``avoid > 0``).
        """
        rng = as_generator(rng)
        concentration = _finite_scalar("concentration", concentration, lower=0.0)
        avoid = _finite_scalar("avoid", avoid, lower=0.0)
        reward_scale = _finite_scalar("reward_scale", reward_scale)
        ref_scale = _finite_scalar("ref_scale", ref_scale)
        S, A, d = int(n_states), int(n_actions), int(dim)
        if S < 1 or d < 1:
            raise ValueError(f"need n_states >= 1 and dim >= 1, got {S} and {d}")
        psi = rng.standard_normal((S, A, d))
        if spectrum is not None:
            spectrum = _finite("spectrum", spectrum, (d,))
            if np.any(spectrum < 0) or not np.any(spectrum > 0):
                raise ValueError(f"spectrum must be a nonnegative vector of length {d} with a "
                                 "positive entry")
            psi = psi * spectrum
        psi /= max(float(np.linalg.norm(psi, axis=-1).max()), 1e-300)
        if state_dist == "uniform":
            mu = np.full(S, 1.0 / S)
        elif state_dist == "dirichlet":
            mu = rng.dirichlet(np.ones(S))
        else:
            raise ValueError(f"state_dist must be 'uniform' or 'dirichlet', got {state_dist!r}")
        pi_o = softmax(concentration * rng.standard_normal((S, A)), axis=1)
        omega = _random_direction(rng, d) * reward_scale
        theta_ref = _random_direction(rng, d) * ref_scale
        env = cls(psi, mu, pi_o, theta_ref, beta, omega=omega)
        if avoid == 0.0:
            return env
        v = _random_direction(rng, d) if avoid_direction is None else avoid_direction
        return env.avoiding(v, gamma=avoid)

    @classmethod
    def from_arrays(cls, features, *, reward, beta: float = 1.0, ref_logprobs=None,
                    state_dist=None, sampling_policy=None, theta_ref=None) -> LogLinearEnv:
        """An environment from stored arrays (e.g. a language model's completions).

        Args:
            features: (S, A, d) psi(s, a), norms at most 1.
            reward: (S, A) reward table, or (d,) linear weights omega.
            beta: the DPO temperature.
            ref_logprobs: (S, A) log pi_ref(a|s) of a reference that need not be log-linear
                (normalised over the A actions of each state here); it becomes
                ``base_logits`` and pi_ref = pi_0. Every entry must be finite: a candidate
                of zero reference probability cannot be in the support.
            state_dist: (S,) mu (default uniform).
            sampling_policy: (S, A) pi_o (default uniform over the A actions).
            theta_ref: (d,) (default 0).
        """
        psi = np.asarray(features, dtype=float)
        if psi.ndim != 3:
            raise ValueError(f"features must have shape (S, A, d), got {psi.shape}")
        S, A, d = psi.shape
        base = None
        if ref_logprobs is not None:
            lp = np.asarray(ref_logprobs, dtype=float)
            if lp.shape != (S, A):
                raise ValueError(f"ref_logprobs must have shape {(S, A)}, got {lp.shape}")
            if np.any(np.isneginf(lp)):
                raise ValueError(f"ref_logprobs has {int(np.isneginf(lp).sum())} entries of "
                                 "-inf (zero reference probability); every candidate must "
                                 "have positive probability")
            base = log_softmax(_finite("ref_logprobs", lp), axis=1)
        mu = np.full(S, 1.0 / S) if state_dist is None else state_dist
        pi_o = np.full((S, A), 1.0 / A) if sampling_policy is None else sampling_policy
        ref = np.zeros(d) if theta_ref is None else theta_ref
        reward = np.asarray(reward, dtype=float)
        table = reward.shape != (d,)
        return cls(psi, mu, pi_o, ref, beta, omega=None if table else reward,
                   reward_table=reward if table else None, base_logits=base)

    def with_reward(self, reward) -> LogLinearEnv:
        """A copy with a new reward: a (d,) omega (linear) or an (S, A) table."""
        reward = np.asarray(reward, dtype=float)
        if reward.shape == (self.dim,):
            return replace(self, omega=reward, reward_table=None)
        return replace(self, omega=None, reward_table=reward)

    def with_sampling_policy(self, sampling_policy) -> LogLinearEnv:
        """A copy that samples both responses from the (S, A) ``sampling_policy``; the
        features, state distribution, reward and theta* are unchanged."""
        return replace(self, sampling_policy=sampling_policy)

    def avoiding(self, direction, *, gamma: float) -> LogLinearEnv:
        r"""A copy whose sampling policy avoids the feature direction v.

        .. math::
            \pi_o'(a|s) \propto \pi_o(a|s)\,\exp\!\big(-\gamma\,(\psi(s,a)^\top v)^2/2\big),
            \qquad v = \text{direction}/\|\text{direction}\|.

        The pairs x = psi(s, a1) - psi(s, a2) then have a smaller component along v, so
        v . Sigma v and, once it is the smallest, lambda_min(Sigma) fall as gamma grows
        (coverage through the data): the features, reward and theta* are unchanged, as
        they would not be under a rescaling of the features (a reparametrisation). For
        large gamma each state keeps only its actions with the smallest |psi . v|, more
        pairs are ties (a1 = a2) and the other directions lose coverage too.

        Args:
            direction: (d,) a nonzero vector v.
            gamma: the strength, >= 0 (0 returns this environment).
        """
        gamma = _finite_scalar("gamma", gamma, lower=0.0)
        v = _finite("direction", direction, (self.dim,))
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            raise ValueError("direction must be a nonzero vector")
        if gamma == 0.0:
            return self
        c = self.features @ (v / norm)
        with np.errstate(divide="ignore"):
            logits = np.log(self.sampling_policy) - 0.5 * gamma * c**2
        return self.with_sampling_policy(softmax(logits, axis=1))

    # ------------------------------------------------------------------ shape
    @property
    def n_states(self) -> int:
        return self.features.shape[0]

    @property
    def n_actions(self) -> int:
        return self.features.shape[1]

    @property
    def dim(self) -> int:
        return self.features.shape[2]

    @property
    def reward(self) -> np.ndarray:
        """(S, A) the reward table r(s, a)."""
        if self.reward_table is not None:
            return self.reward_table
        return self.features @ self.omega

    # --------------------------------------------------------------- policies
    def logits(self, theta) -> np.ndarray:
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (self.dim,):
            raise ValueError(f"theta must have shape ({self.dim},), got {theta.shape}")
        z = self.features @ theta
        return z if self.base_logits is None else z + self.base_logits

    def policy(self, theta) -> np.ndarray:
        """(S, A) pi_theta(a|s)."""
        return softmax(self.logits(theta), axis=1)

    def log_policy(self, theta) -> np.ndarray:
        return log_softmax(self.logits(theta), axis=1)

    def divergence(self, theta_p, theta_q) -> PolicyDivergence:
        """Policy-space distance of pi_{theta_q} from pi_{theta_p}, averaged over mu:
        E_s KL(pi_p(.|s) || pi_q(.|s)) and E_s TV = E_s (1/2) sum_a |pi_p - pi_q|."""
        lp, lq = self.log_policy(theta_p), self.log_policy(theta_q)
        p = np.exp(lp)
        kl = np.sum(p * (lp - lq), axis=1)
        tv = 0.5 * np.sum(np.abs(p - np.exp(lq)), axis=1)
        return PolicyDivergence(max(float(self.state_dist @ kl), 0.0),
                                float(self.state_dist @ tv))

    def theta_star(self) -> np.ndarray:
        """DPO's population optimum: theta_ref + omega / beta for a linear reward,
        otherwise the exact population DPO fit (the best log-linear approximation)."""
        if self.omega is not None:
            return self.theta_ref + self.omega / self.beta
        from .fit import fit_dpo

        return fit_dpo(self.population(), beta=self.beta).theta

    def value(self, theta, reward=None) -> PolicyValue:
        """E_s E_{a ~ pi_theta}[r(s, a)], KL(pi_theta || pi_ref) and E[r] - beta KL."""
        r = self.reward if reward is None else np.asarray(reward, dtype=float)
        if r.shape != (self.n_states, self.n_actions):
            raise ValueError(f"reward must be an (S, A) table, got {r.shape}")
        logp = self.log_policy(theta)
        p = np.exp(logp)
        er = float(self.state_dist @ np.sum(p * r, axis=1))
        kl = float(self.state_dist @ np.sum(p * (logp - self.log_policy(self.theta_ref)), axis=1))
        return PolicyValue(er, kl, er - self.beta * kl)

    # ------------------------------------------------------------------- data
    def _pairs(self, s, a1, a2, y, weight, centered, normalize=False) -> PreferenceData:
        x = self.features[s, a1] - self.features[s, a2]
        offset = np.zeros(len(s)) if centered else x @ self.theta_ref
        return PreferenceData(x, y, offset, weight, s, a1, a2, normalize=normalize)

    def preference_prob(self) -> np.ndarray:
        """(S, A, A) P(a1 preferred to a2 | s) = sigma(r(s, a1) - r(s, a2))."""
        r = self.reward
        return expit(r[:, :, None] - r[:, None, :])

    def sample(self, n: int, rng: np.random.Generator | int, *, centered: bool = False
               ) -> PreferenceData:
        """n i.i.d. pairs: s ~ mu, a1, a2 ~ pi_o(.|s) independently, y ~ Bradley-Terry.

        ``centered=True`` gives zero offsets (parameter w = theta - theta_ref);
        otherwise offsets are the reference log-ratios theta_ref . x. ``rng`` is a Generator
        or an integer seed.
        """
        rng = as_generator(rng)
        n = _count(n)
        S, A = self.n_states, self.n_actions
        s = rng.choice(S, size=n, p=self.state_dist)
        cdf = np.cumsum(self.sampling_policy, axis=1)
        cdf[:, -1] = 1.0
        u = rng.random((2, n))
        a1 = np.minimum((u[0][:, None] > cdf[s]).sum(1), A - 1)
        a2 = np.minimum((u[1][:, None] > cdf[s]).sum(1), A - 1)
        y = (rng.random(n) < self.preference_prob()[s, a1, a2]).astype(float)
        return self._pairs(s, a1, a2, y, None, centered)

    def population(self, *, exclude_ties: bool = False, centered: bool = False
                   ) -> PreferenceData:
        """Every (s, a1, a2, y) atom with its exact probability (zero-probability atoms
        dropped). ``exclude_ties`` removes a1 == a2 pairs (x = 0) and renormalises."""
        A = self.n_actions
        p1 = self.preference_prob()
        joint = (self.state_dist[:, None, None] * self.sampling_policy[:, :, None]
                 * self.sampling_policy[:, None, :])
        if exclude_ties:
            joint = joint * (1.0 - np.eye(A))[None]
        prob = np.stack([joint * p1, joint * (1.0 - p1)], axis=-1)  # y = 1, y = 0
        s, a1, a2, k = np.nonzero(prob > 0)
        if s.size == 0:
            raise ValueError("the population is empty (all atoms have zero probability)")
        y = (k == 0).astype(float)
        return self._pairs(s, a1, a2, y, prob[s, a1, a2, k], centered, normalize=True)

    def sample_counts(self, n: int, rng: np.random.Generator | int, *, centered: bool = False
                      ) -> PreferenceData:
        """n i.i.d. pairs in compressed form: multinomial counts over the population atoms.

        Equal in distribution to ``sample(n, rng).compress()`` (with ties kept), at a
        cost independent of n.
        """
        rng = as_generator(rng)
        n = _count(n)
        pop = self.population(centered=centered)
        counts = rng.multinomial(n, pop.weight)
        return pop.subset(counts > 0).with_weight(counts[counts > 0] / n)

    def coverage(self, data: PreferenceData | None = None) -> Coverage:
        """Sigma = E[x x^T] and its smallest eigenvalue, for the population (default,
        ties included, as sampled) or for ``data``."""
        return coverage(self.population() if data is None else require_data(data))


def _random_direction(rng: np.random.Generator, d: int) -> np.ndarray:
    v = rng.standard_normal(d)
    return v / np.linalg.norm(v)
