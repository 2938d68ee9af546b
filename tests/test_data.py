"""PreferenceData: validation, compression, transforms, io."""

import numpy as np
import pytest
from conftest import NEWTON_THETA_TOL
from hypothesis import given
from strategies import preference_data

from loglinear import PreferenceData, fit_dpo


def _data(n=5, d=2):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)), (rng.random(n) < 0.5).astype(float)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"x": np.zeros(3)}, "2-d array"),
        ({"y": np.zeros(4)}, "y must have shape"),
        ({"x": np.array([[np.nan, 0.0]] * 5)}, "NaN or infinite"),
        ({"y": np.array([0, 1, 2, 0, 1.0])}, "labels y must be 0 or 1"),
        ({"weight": np.array([-0.1, 0.3, 0.3, 0.3, 0.2])}, "nonnegative"),
        ({"weight": np.full(5, 0.3)}, "normalize=True"),
        ({"offset": np.zeros(4)}, "offset must have shape"),
        ({"x": np.zeros((0, 2)), "y": np.zeros(0)}, "empty"),
        ({"state": np.array([0, 1, 2, 3, -1])}, "nonnegative indices"),
        ({"weight": np.array([1.0, np.inf, 0, 0, 0])}, "NaN or infinite"),
    ],
)
def test_validation_errors_say_what_is_wrong(kwargs, message):
    x, y = _data()
    args = {"x": x, "y": y} | kwargs
    with pytest.raises(ValueError, match=message):
        PreferenceData(**args)


def test_defaults_and_normalize():
    x, y = _data()
    d = PreferenceData(x, y)
    np.testing.assert_array_equal(d.weight, np.full(5, 0.2))
    np.testing.assert_array_equal(d.offset, np.zeros(5))
    d2 = PreferenceData(x, y, weight=np.arange(1.0, 6.0), normalize=True)
    np.testing.assert_allclose(d2.weight, np.arange(1.0, 6.0) / 15.0)
    assert d.n == 5 and d.d == 2 and len(d) == 5
    with pytest.raises(ValueError):  # arrays are read-only
        d.x[0, 0] = 1.0


def test_compress_merges_duplicates_and_adds_weights():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y = np.array([1.0, 1.0, 0.0, 0.0])
    c = PreferenceData(x, y, weight=[0.1, 0.2, 0.3, 0.4]).compress()
    assert c.n == 3
    got = {(tuple(r), yy): w for r, yy, w in zip(c.x, c.y, c.weight)}
    assert got[((1.0, 0.0), 1.0)] == pytest.approx(0.3)
    assert got[((1.0, 0.0), 0.0)] == pytest.approx(0.4)
    assert got[((0.0, 1.0), 0.0)] == pytest.approx(0.3)


def test_compress_keeps_consistent_indices_only():
    x = np.array([[1.0, 0.0], [1.0, 0.0]])
    y = np.array([1.0, 1.0])
    same = PreferenceData(x, y, state=[2, 2], a1=[0, 0], a2=[1, 1]).compress()
    assert same.state.tolist() == [2] and same.a1.tolist() == [0]
    diff = PreferenceData(x, y, state=[2, 3], a1=[0, 0], a2=[1, 1]).compress()
    assert diff.state is None and diff.a1.tolist() == [0]


@given(preference_data(with_offset=True))
def test_fit_on_compressed_equals_fit_on_rows(data):
    repeated = PreferenceData.concat([data, data, data.subset(np.arange(2))])
    a = fit_dpo(repeated, beta=1.0)
    b = fit_dpo(repeated.compress(), beta=1.0)
    np.testing.assert_allclose(a.theta, b.theta, atol=NEWTON_THETA_TOL)
    assert a.objective == pytest.approx(b.objective, rel=1e-10)


def test_flip_is_an_involution_and_preserves_weights():
    x, y = _data()
    d = PreferenceData(x, y, offset=np.arange(5.0), state=[0] * 5, a1=[0, 1, 2, 3, 4],
                       a2=[1] * 5)
    f = d.flip()
    np.testing.assert_array_equal(f.x, -d.x)
    np.testing.assert_array_equal(f.y, 1 - d.y)
    np.testing.assert_array_equal(f.a1, d.a2)
    np.testing.assert_array_equal(f.z, d.z)  # the signed features are invariant
    np.testing.assert_array_equal(f.flip().x, d.x)


def test_concat_weights_and_subset():
    x, y = _data()
    a = PreferenceData(x, y)
    b = PreferenceData(x[:2], y[:2])
    c = PreferenceData.concat([a, b], weights=[3, 1])
    assert c.n == 7
    assert c.weight[:5].sum() == pytest.approx(0.75)
    s = c.subset([0, 1])
    assert s.weight.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_save_load_roundtrip(tmp_path, suffix):
    x, y = _data()
    d = PreferenceData(x, y, offset=np.linspace(0, 1, 5), weight=np.arange(1.0, 6) / 15,
                       state=np.arange(5), a1=np.arange(5), a2=np.zeros(5, int))
    path = tmp_path / f"data{suffix}"
    assert d.save(path) == path and path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    e = PreferenceData.load(path)
    np.testing.assert_array_equal(e.x, d.x)
    np.testing.assert_array_equal(e.offset, d.offset)
    np.testing.assert_allclose(e.weight, d.weight, rtol=1e-15)
    np.testing.assert_array_equal(e.state, d.state)


def test_parquet_is_written_in_the_documented_columns(tmp_path):
    pd = pytest.importorskip("pandas")
    x, y = _data(d=3)
    path = PreferenceData(x, y).save(tmp_path / "out.parquet")
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["x0", "x1", "x2", "y", "offset", "weight"]
    np.testing.assert_array_equal(frame[["x0", "x1", "x2"]].to_numpy(), x)
    np.testing.assert_array_equal(frame["weight"].to_numpy(), np.full(5, 0.2))


def test_save_and_load_refuse_other_suffixes(tmp_path):
    x, y = _data()
    d = PreferenceData(x, y)
    with pytest.raises(ValueError, match=r"writes \.npz or \.parquet.*'\.csv'"):
        d.save(tmp_path / "out.csv")
    assert not list(tmp_path.iterdir())
    assert d.save(tmp_path / "plain") == tmp_path / "plain.npz"   # no suffix: .npz
    with pytest.raises(ValueError, match=r"reads \.npz or \.parquet"):
        PreferenceData.load(tmp_path / "out.csv")


def test_loading_an_npz_with_other_keys_lists_them(tmp_path):
    x, y = _data()
    np.savez(tmp_path / "d.npz", X=x, y=y)
    with pytest.raises(ValueError, match=r"expected arrays x, y.*found \['X', 'y'\]"):
        PreferenceData.load(tmp_path / "d.npz")


def test_scaled_features_leave_the_margins_of_rescaled_parameters_unchanged():
    from loglinear.losses import margins

    x, y = _data(n=6, d=3)
    d = PreferenceData(x, y, offset=np.linspace(-1, 1, 6))
    theta = np.array([0.3, -1.2, 0.8])
    for factor in (1e-6, 0.5, 1e6):
        s = d.scaled(factor)
        assert s.feature_scale == pytest.approx(factor * d.feature_scale, rel=1e-15)
        np.testing.assert_allclose(margins(theta / factor, s, beta=0.7),
                                   margins(theta, d, beta=0.7), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="factor"):
        d.scaled(0.0)
