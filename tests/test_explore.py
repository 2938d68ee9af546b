"""Contracts of loglinear.experiments.explore (the computations behind the notebooks) and of
its views (loglinear.plots)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from conftest import FLOAT64_TOL, SOLVER_THETA_TOL  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from strategies import environments  # noqa: E402

from loglinear import plots as views  # noqa: E402
from loglinear.experiments import explore  # noqa: E402

# Eigenvalues of matrices with entries O(1), computed two ways in float64.
EIG_TOL = 1e-10


@settings(deadline=None)
@given(env=environments())
def test_sigma_identity_matches_enumerated_pairs(env):
    """Sigma over every enumerated (s, a1, a2, y) atom = 2 sum_s mu Cov_{pi_o}(psi)."""
    np.testing.assert_allclose(explore.sigma_from_covariances(env), env.coverage().sigma,
                               atol=FLOAT64_TOL * 100)


def test_sigma_identity_against_monte_carlo():
    env = explore.random_env(np.random.default_rng(3), n_states=3, n_actions=3, dim=2,
                             concentration=1.0)
    data = env.sample(200_000, np.random.default_rng(4))
    sigma_mc = data.x.T @ data.x / data.n
    # Monte Carlo error of a mean of O(1) terms over 2e5 draws is ~ 2e-3.
    np.testing.assert_allclose(sigma_mc, explore.sigma_from_covariances(env), atol=1e-2)


def test_fewer_states_than_dimensions_is_singular_with_two_actions():
    """With A = 2 each state adds a rank-one term, so S < d forces lambda_min = 0."""
    rows = explore.coverage_sweep(grid={"n_states": [1, 2, 3, 4, 5]},
                                  base={"n_actions": 2, "dim": 4, "concentration": 0.5},
                                  replicates=2, seed=1)
    for r in rows:
        if r["n_states"] < 4:
            assert r["lambda_min"] < EIG_TOL
        else:
            assert r["lambda_min"] > 1e-6


def test_sweep_population_rows_match_direct_eigenvalues():
    rows = explore.coverage_sweep(grid={"concentration": [0.0, 2.0]}, base={"dim": 3},
                                  replicates=2, seed=5)
    assert len(rows) == 4 and all(r["n"] == 0 for r in rows)
    seqs = np.random.SeedSequence(5).spawn(2)
    for r in rows:
        env_ss, _ = seqs[r["replicate"]].spawn(2)
        env = explore.random_env(np.random.default_rng(env_ss), dim=3,
                                 concentration=r["concentration"])
        vals = np.linalg.eigvalsh(explore.sigma_from_covariances(env))
        assert r["lambda_min"] == pytest.approx(vals[0], abs=EIG_TOL)
        assert r["lambda_max"] == pytest.approx(vals[-1], abs=EIG_TOL)
        assert r["lambda_ratio"] == pytest.approx(1.0)


def test_common_random_numbers_across_concentration():
    a = explore.random_env(np.random.default_rng(9), concentration=0.0)
    b = explore.random_env(np.random.default_rng(9), concentration=4.0)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_allclose(a.sampling_policy, 1.0 / a.n_actions)
    assert b.sampling_policy.max() > a.sampling_policy.max()


def test_sample_sigma_error_shrinks_like_root_n():
    rows = pd.DataFrame(explore.coverage_sweep(grid={"concentration": [1.0]}, base={"dim": 3},
                                               n_values=[100, 10_000], replicates=12, seed=2))
    err = rows[rows.n > 0].groupby("n").sigma_error.mean()
    # E||Sigma_D - Sigma|| ~ c / sqrt(n): a 100x larger n gives ~10x smaller error.
    assert 4.0 < err[100] / err[10_000] < 25.0
    ratio = rows[rows.n == 10_000].lambda_ratio
    assert np.all(np.abs(ratio - 1) < 0.2)


def test_sweep_is_deterministic_under_a_seed():
    kw = dict(grid={"concentration": [1.0]}, n_values=[50], replicates=2, seed=11)
    assert explore.coverage_sweep(**kw) == explore.coverage_sweep(**kw)
    assert explore.coverage_sweep(**kw) != explore.coverage_sweep(**{**kw, "seed": 12})


def test_spectrum_decay_scales_coordinates():
    env = explore.random_env(np.random.default_rng(0), n_states=40, n_actions=6, dim=3,
                             spectrum_decay=0.1)
    std = env.features.reshape(-1, 3).std(axis=0)
    assert std[1] / std[0] == pytest.approx(0.1, rel=0.3)
    assert std[2] / std[1] == pytest.approx(0.1, rel=0.3)


def test_projection_decomposes_each_eigenvalue_by_state():
    env = explore.random_env(np.random.default_rng(4), n_states=5, n_actions=4, dim=3,
                             concentration=2.0)
    proj = explore.project_features(env)
    vals = np.linalg.eigvalsh(explore.sigma_from_covariances(env))
    np.testing.assert_allclose(proj.direction_variance.sum(axis=0), vals, atol=EIG_TOL)
    np.testing.assert_allclose(proj.mass.sum(), 1.0, atol=FLOAT64_TOL * 10)
    # centred coordinates have zero pi_o-mean in every state
    np.testing.assert_allclose(np.einsum("sa,sak->sk", env.sampling_policy, proj.centered),
                               0.0, atol=EIG_TOL)


def test_eigen_paths_match_direct_spectra():
    rows = pd.DataFrame(explore.eigen_paths(concentrations=[0.0, 3.0], base={"dim": 3},
                                            seed=6))
    for c, sub in rows.groupby("concentration"):
        env = explore.random_env(np.random.default_rng(6), dim=3, concentration=c)
        np.testing.assert_allclose(sub.sort_values("k").eigval,
                                   np.linalg.eigvalsh(env.coverage().sigma), atol=EIG_TOL)


@pytest.mark.parametrize("kwargs, match", [
    (dict(grid={"colour": [1]}), "unknown grid knobs"),
    (dict(grid={"dim": [2]}, base={"dim": 3}), "both grid and base"),
    (dict(grid={}, replicates=0), "replicates"),
    (dict(grid={}, n_values=[0]), "sample sizes"),
])
def test_sweep_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        explore.coverage_sweep(**kwargs)


def test_random_env_rejects_bad_input():
    with pytest.raises(ValueError, match="spectrum_decay"):
        explore.random_env(np.random.default_rng(0), spectrum_decay=0.0)
    with pytest.raises(ValueError, match="unknown environment parameters"):
        explore.random_env(np.random.default_rng(0), dimension=3)


def test_views_return_labelled_figures():
    rows = explore.coverage_sweep(grid={"concentration": [0.0, 2.0], "dim": [2, 3]},
                                  n_values=[30], replicates=2, seed=0)
    figs = [
        views.plot_lines(rows, x="concentration", y="lambda_min", hue="n", title="t",
                         logy=True, floor=1e-8, stat="median"),
        views.plot_lines([r for r in rows if r["n"] > 0], x="n", y="sigma_error",
                         hue="dim", title="t", logx=True, ref_slope=-0.5),
        views.plot_heatmap(rows, x="concentration", y="dim", value="lambda_min", title="h"),
        views.plot_eigen_paths(explore.eigen_paths(concentrations=[0.0, 1.0])),
        views.plot_feature_projections(
            {"a": explore.project_features(explore.random_env(np.random.default_rng(0)))},
            title="p"),
        views.plot_direction_variance(
            explore.project_features(explore.random_env(np.random.default_rng(0))), title="v"),
    ]
    for fig in figs:
        ax = fig.axes[0]
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        plt.close(fig)
    with pytest.raises(ValueError, match="lack columns"):
        views.plot_lines(rows, x="nope", y="lambda_min", title="t")
    with pytest.raises(ValueError, match="positive"):
        views.plot_lines(rows, x="concentration", y="lambda_min", title="t", ref_slope=-1)
    with pytest.raises(ValueError, match="no records"):
        views.plot_heatmap([], x="a", y="b", value="c", title="t")


# ------------------------------------------------------------ lambda dependence
def test_summarize_rates_by_hand():
    rows = [dict(setting="a", estimator="dpo", n=100, seed=s, error=e, lambda_min=0.1,
                 tr_hinv=4.0, tr_sandwich=9.0, schedule="none")
            for s, e in enumerate([0.1, 0.2, np.nan, 0.4])]
    (out,) = explore.summarize_rates(rows)
    assert out["rmse"] == pytest.approx(np.sqrt((0.01 + 0.04 + 0.16) / 3))
    assert (out["seeds"], out["failed"]) == (3, 1)
    assert out["pred_hinv"] == pytest.approx(0.2)
    assert out["pred_sandwich"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="lack columns"):
        explore.summarize_rates([{"setting": "a"}])


def test_collapse_radius_matches_direct_minimisation():
    """rho_0 = -min_nu log E_q exp(nu . z), minimised here by BFGS from scratch."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    base = {"n_states": 4, "n_actions": 3, "dim": 2}
    rows = explore.collapse_sweep(concentrations=[0.0, 3.0], base=base, seed=2)
    for r in rows:
        env = explore.random_env(np.random.default_rng(np.random.SeedSequence(2).spawn(1)[0]),
                                 concentration=r["concentration"], **base)
        pop = env.population(centered=True)
        f = lambda nu, pop=pop: logsumexp(pop.z @ nu, b=pop.weight)
        mean_z = float(np.linalg.norm(pop.weight @ pop.z))
        if r["kind"] == "kl":
            best = minimize(f, np.zeros(2), method="BFGS", options={"gtol": 1e-12})
            assert r["collapse_radius"] == pytest.approx(-best.fun, rel=1e-6, abs=1e-10)
        else:
            # kappa = inf: W1 collapses at ||E z|| / 2 (closed form L + eps beta ||w||);
            # W2 at ||E z|| (first-order penalty eps beta ||w|| sqrt(E sigma^2), sigma = 1/2)
            want = mean_z / 2 if r["kind"] == "w1" else mean_z
            assert r["collapse_radius"] == pytest.approx(want, rel=1e-9)
        assert r["lambda_min"] == pytest.approx(env.coverage().lambda_min, abs=EIG_TOL)
    assert {r["kind"] for r in rows} >= {"kl"}


def test_kl_shrinkage_is_radial_with_closed_form_scale():
    """Linear BT reward: the KL-robust population optimum is w* lambda*/(1 + lambda*)."""
    env = explore.random_env(np.random.default_rng(1), n_states=5, n_actions=3, dim=2,
                             reward_scale=1.5, concentration=1.0)
    rows = explore.shrinkage_path(env, fractions=[0.0, 0.2, 0.7, 1.0, 1.5])
    assert rows[0]["norm_ratio"] == pytest.approx(1.0, abs=1e-8)
    assert rows[0]["kl_to_ref"] == pytest.approx(env.value(env.theta_star()).kl)
    for r in rows[1:3]:
        assert r["norm_ratio"] == pytest.approx(r["dual"] / (1 + r["dual"]), abs=1e-7)
        assert r["cosine"] == pytest.approx(1.0, abs=1e-9)
    for r in rows[3:]:
        assert r["norm_ratio"] == 0.0 and r["kl_to_ref"] == pytest.approx(0.0, abs=1e-15)
    ratios = [r["norm_ratio"] for r in rows]
    assert all(a >= b for a, b in zip(ratios, ratios[1:]))
    with pytest.raises(ValueError, match="unknown ball 'tv'"):
        explore.shrinkage_path(env, fractions=[0.1], kind="tv")
    with pytest.raises(ValueError, match="fractions"):
        explore.shrinkage_path(env, fractions=[-0.1])


def test_lambda_views_return_labelled_figures():
    summary = [dict(setting=s, estimator=e, schedule="none", n=n, lambda_min=lam,
                    rmse=1 / np.sqrt(n * lam), seeds=3, failed=0,
                    pred_hinv=1.1 / np.sqrt(n * lam), pred_sandwich=1 / np.sqrt(n * lam))
               for s, lam in (("a", 0.1), ("b", 0.01)) for e in ("dpo", "kl")
               for n in (100, 1000)]
    ns = np.array([100.0, 1000.0])
    figs = [
        views.plot_error_vs_lambda(summary, title="e"),
        views.plot_prediction_scatter(summary, title="p"),
        views.plot_against_lambda(summary, y="rmse", hue="estimator", title="a", ylabel="y",
                                  references={"ref": (np.array([0.01, 0.1]),
                                                      np.array([1.0, 0.1]))}),
        views.plot_bound_curves([r for r in summary if r["setting"] == "a"],
                                {"bound": (ns, 10 / ns ** 0.25)}, title="b"),
    ]
    for fig in figs:
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel()
        assert ax.get_title() or fig._suptitle is not None
        plt.close(fig)


# ------------------------------------------------------------ exact vs surrogates
@pytest.fixture(scope="module")
def sample_2d():
    env = explore.random_env(np.random.default_rng(0), n_states=5, n_actions=3, dim=2,
                             concentration=1.0, reward_scale=1.5)
    return env.sample_counts(1500, np.random.default_rng(1), centered=True)


def test_kldpo_sweep_reproduces_exact_kl(sample_2d):
    rows = explore.kl_surrogate_sweep(sample_2d, beta=1.0, taus=[0.1, 1.0, 10.0])
    radii = [r["radius"] for r in rows]
    assert all(a > b for a, b in zip(radii, radii[1:]))  # rho(tau) decreases
    for r in rows:
        assert 0 < r["radius"] < r["collapse_radius"]
        assert r["distance_paper"] < SOLVER_THETA_TOL
        assert r["dual"] == pytest.approx(r["tau"], rel=1e-6)


def test_wasserstein_sweep_contracts(sample_2d):
    from loglinear import fit_dpo

    rows = pd.DataFrame(explore.wasserstein_surrogate_sweep(
        sample_2d, beta=1.0, fractions=[0.0, 0.05, 0.1, 0.6]))
    dpo = np.linalg.norm(fit_dpo(sample_2d, beta=1.0).theta)
    at0 = rows[rows.fraction == 0.0]
    np.testing.assert_allclose(at0.norm, dpo, rtol=1e-8)
    assert set(at0.method) == {"exact-w1", "exact-w2", "wdpo-paper"}
    assert (rows.excess > -1e-9).all()  # nothing beats the exact W2 optimum on its own loss
    # W1 (kappa = inf) collapses at half the W2 collapse radius (closed forms, zero offsets)
    assert rows[(rows.method == "exact-w1") & (rows.fraction == 0.6)].norm.iloc[0] == 0.0
    # the paper's WDPO is W2's first-order expansion: its error is o(eps)
    d = rows[rows.method == "wdpo-paper"].set_index("fraction").distance
    assert d[0.05] / d[0.1] < 0.4


def test_worst_case_views(sample_2d):
    from loglinear import robust
    from loglinear.losses import margins

    kl = robust.solve_kl(sample_2d, beta=1.0, radius=0.01)
    w2 = robust.solve_wasserstein(sample_2d, beta=1.0, radius=0.02, p=2)
    figs = [
        views.plot_kl_reweighting({"r": (margins(kl.theta, sample_2d, beta=1.0),
                                         kl.worst_case, sample_2d.weight)}, title="k"),
        views.plot_transport({"w2": (sample_2d.x, sample_2d.y, sample_2d.weight,
                                     w2.worst_case, w2.theta)}, title="t", magnify=3),
    ]
    for fig in figs:
        assert fig.axes[0].get_title() and fig.axes[0].get_xlabel()
        plt.close(fig)
    x3 = np.zeros((2, 3))
    with pytest.raises(ValueError, match="2-d"):
        views.plot_transport({"bad": (x3, np.ones(2), np.full(2, .5), w2.worst_case,
                                      w2.theta)}, title="t")


def test_mass_dynamics_view():
    rows = [dict(step=t, p_chosen=0.2 + 0.001 * t, p_rejected=0.2 * 0.99 ** t,
                 unseen_mass=0.1, scenario=sc, sharing=eta)
            for t in range(0, 50, 10) for sc in ("on-on", "off-on") for eta in (0.0, 0.5)]
    fig = views.plot_mass_dynamics(rows, title="m")
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "scenario on-on"
    assert fig.axes[0].get_ylabel()
    plt.close(fig)
    with pytest.raises(ValueError, match="lack columns"):
        views.plot_mass_dynamics([{"step": 0}], title="m")
