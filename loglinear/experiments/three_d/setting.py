"""The fixed-data setting of the 3D study (docs/theory.md §6.2): a finite log-linear
environment with a dataset whose pairs carry their state and actions, so that every
probability the diagnostics need is exact. Training works in w = theta - theta_ref on the
centred data (docs/theory.md §2.3), so w = 0 is pi_ref."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import log_softmax

from ...data import PreferenceData
from ...env import LogLinearEnv

FEATURE_MATCH_TOL = 1e-9


@dataclass(frozen=True, eq=False)
class PairSetting:
    """A finite environment together with a fixed dataset whose pairs carry actions.

    Args:
        env: the log-linear environment (features, pi_ref = pi_{theta_ref}, reward).
        data: pairs with ``state``, ``a1``, ``a2``; x must equal
            psi(s, a1) - psi(s, a2). Offsets are ignored: the setting works in
            w = theta - theta_ref with the centered data (o = 0).
        truth_first: a1 is the response the preference model favours in every row (so a
            pair labelled both ways has two rows, y = 1 and y = 0). The diagnostics then
            follow (a1, a2), the pair as designed, rather than each row's label.

    Attributes:
        centered: the centered dataset used by margin objectives.
        chosen, rejected, states: (n,) a^+ (= a1 if y = 1 else a2), a^-, s: the labelled
            roles, which every objective uses.
        favoured, disfavoured: (n,) the responses whose probabilities the 3D diagnostics
            follow: (a1, a2) if ``truth_first``, else (chosen, rejected).
        seen: (S, A) True where the action appears in some pair of that state.
        state_weight: (S,) total data weight of each state's pairs.
    """

    env: LogLinearEnv
    data: PreferenceData
    truth_first: bool = False
    centered: PreferenceData = field(init=False)
    chosen: np.ndarray = field(init=False)
    rejected: np.ndarray = field(init=False)
    states: np.ndarray = field(init=False)
    seen: np.ndarray = field(init=False)
    state_weight: np.ndarray = field(init=False)
    favoured: np.ndarray = field(init=False)
    disfavoured: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        env, data = self.env, self.data
        if not data.has_actions:
            raise ValueError("the data must carry state, a1 and a2 indices (PreferenceData"
                             "(..., state=, a1=, a2=)); LogLinearEnv.sample provides them")
        S, A = env.n_states, env.n_actions
        if data.d != env.dim:
            raise ValueError(f"data dimension {data.d} differs from the environment's {env.dim}")
        if data.state.max() >= S or max(data.a1.max(), data.a2.max()) >= A:
            raise ValueError(f"state/action indices exceed the environment's (S, A) = {(S, A)}")
        x = env.features[data.state, data.a1] - env.features[data.state, data.a2]
        if np.max(np.abs(x - data.x)) > FEATURE_MATCH_TOL:
            raise ValueError("data.x does not equal psi(s, a1) - psi(s, a2) of this environment")
        up = data.y == 1
        chosen = np.where(up, data.a1, data.a2)
        rejected = np.where(up, data.a2, data.a1)
        seen = np.zeros((S, A), dtype=bool)
        seen[data.state, data.a1] = True
        seen[data.state, data.a2] = True
        sw = np.bincount(data.state, weights=data.weight, minlength=S)
        fav, dis = (data.a1, data.a2) if self.truth_first else (chosen, rejected)
        for name, arr in (("centered", data.centered()), ("chosen", chosen),
                          ("rejected", rejected), ("states", data.state), ("seen", seen),
                          ("state_weight", sw), ("favoured", fav), ("disfavoured", dis)):
            if isinstance(arr, np.ndarray):
                arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def dim(self) -> int:
        return self.env.dim

    def theta(self, w) -> np.ndarray:
        return self.env.theta_ref + np.asarray(w, dtype=float)

    def log_policy(self, w) -> np.ndarray:
        """(S, A) log pi_w(a|s)."""
        return log_softmax(self.env.logits(self.theta(w)), axis=1)

    def grad_log_prob(self, policy: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """(n, d) grad_w log pi_w(a_i|s_i) = psi(s_i, a_i) - E_{pi_w(.|s_i)} psi(s_i, .)."""
        mean_feat = np.einsum("sa,sad->sd", policy, self.env.features)
        return self.env.features[self.states, actions] - mean_feat[self.states]

    def unseen_mass(self, policy: np.ndarray) -> np.ndarray:
        """(S,) mass on actions that appear in no pair of the state."""
        return np.where(self.seen, 0.0, policy).sum(axis=1)

    def seen_mass(self, policy: np.ndarray) -> np.ndarray:
        """(S,) mass on actions that appear in some pair of the state."""
        return np.where(self.seen, policy, 0.0).sum(axis=1)
