"""Reading preference pairs from the files people have (``loglinear.io``).

Each format is written here by hand (csv/json/numpy/pandas directly, not through the
writer under test) and must read back to the arrays it was written from.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from loglinear import PreferenceData
from loglinear.io import (
    add_data_arguments,
    data_from_args,
    read_preferences,
    write_preferences,
)


@pytest.fixture
def pairs():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(7, 3))
    y = (rng.random(7) < 0.6).astype(float)
    w = rng.uniform(0.5, 2.0, 7)
    o = rng.normal(scale=0.1, size=7)
    return x, y, w, o


def _check(data, x, y, w=None, o=None):
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, y)
    want_w = np.full(len(y), 1 / len(y)) if w is None else w / w.sum()
    np.testing.assert_allclose(data.weight, want_w, rtol=1e-15)
    np.testing.assert_array_equal(data.offset, np.zeros(len(y)) if o is None else o)


def test_csv_with_default_columns(tmp_path, pairs):
    x, y, w, o = pairs
    path = tmp_path / "d.csv"
    lines = ["x0,x1,x2,y,weight,offset,prompt"]
    lines += [",".join(repr(float(v)) for v in (*x[i], y[i], w[i], o[i])) + ",hi [there]"
              for i in range(7)]
    path.write_text("\n".join(lines) + "\n")
    _check(read_preferences(path), x, y, w, o)


def test_csv_with_own_column_names_and_a_pattern(tmp_path, pairs):
    x, y, w, _ = pairs
    pd.DataFrame({"f_a": x[:, 0], "f_b": x[:, 1], "f_c": x[:, 2], "chosen": y.astype(bool),
                  "n": w}).to_csv(tmp_path / "d.csv", index=False)
    data = read_preferences(tmp_path / "d.csv", features="f_*", label="chosen", weight="n")
    _check(data, x, y, w)
    listed = read_preferences(tmp_path / "d.csv", features="f_c, f_a", label="chosen")
    np.testing.assert_array_equal(listed.x, x[:, [2, 0]])


def test_npz_with_keys_X_and_y(tmp_path, pairs):
    x, y, _, _ = pairs
    np.savez(tmp_path / "d.npz", X=x, y=y)
    _check(read_preferences(tmp_path / "d.npz"), x, y)


def test_npz_written_by_save_keeps_loading(tmp_path, pairs):
    x, y, w, o = pairs
    data = PreferenceData(x, y, o, w, state=np.arange(7), a1=np.zeros(7, int),
                          a2=np.ones(7, int), normalize=True)
    back = read_preferences(data.save(tmp_path / "saved.npz"))
    _check(back, x, y, w, o)
    np.testing.assert_array_equal(back.state, np.arange(7))
    assert back.has_actions


def test_parquet_with_an_array_column(tmp_path, pairs):
    x, y, w, _ = pairs
    pd.DataFrame({"features": list(x), "label": y.astype(int), "w": w}).to_parquet(
        tmp_path / "d.parquet")
    _check(read_preferences(tmp_path / "d.parquet"), x, y, w)


def test_jsonl_with_lists_and_booleans(tmp_path, pairs):
    x, y, _, o = pairs
    rows = [{"x": x[i].tolist(), "chosen_is_first": bool(y[i]), "o": o[i], "text": "a"}
            for i in range(7)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _check(read_preferences(tmp_path / "d.jsonl"), x, y, o=o)


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".tsv", ".parquet", ".jsonl"])
def test_write_then_read_is_exact(tmp_path, pairs, suffix):
    x, y, w, o = pairs
    data = PreferenceData(x, y, o, w, normalize=True)
    path = write_preferences(data, tmp_path / f"d{suffix}")
    assert path == tmp_path / f"d{suffix}" and path.exists()
    _check(read_preferences(path), x, y, w, o)


@pytest.mark.parametrize("content, options, expected", [
    ("a,b\n1,0\n", {}, r"no feature columns: expected x0..x\{d-1\}.*columns found: a, b"),
    ("x0,x1,y\n1,2,1\n", {"features": "z*"}, "no column matches.*'z\\*'.*x0, x1, y"),
    ("x0,x1,lab\n1,2,1\n", {}, "no label column: expected one of y, label, chosen_is_first"),
    ("x0,x1,y\n1,2,1\n", {"weight": "w"}, "no weight column 'w'; columns found: x0, x1, y"),
    ("x0,x2,y\n1,2,1\n", {}, r"x0..x2 are incomplete, missing \['x1'\]"),
    ("x0,y\n1,2\n", {}, r"label column 'y' must hold 0/1 or true/false.*\[2.0\]"),
    ("x0,y\n1,1\n,0\n", {}, r"column 'x0' has 1 missing or non-finite values \(rows \[1\]\)"),
    ("x0,y\nabc,1\n", {}, "column 'x0' must hold numbers, found 'abc'"),
])
def test_errors_say_what_was_expected_and_what_was_found(tmp_path, content, options,
                                                         expected):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=expected):
        read_preferences(path, **options)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_preferences(tmp_path / "none.csv")
    (tmp_path / "d.xlsx").write_text("")
    with pytest.raises(ValueError, match="unknown file type '.xlsx'.*CSV"):
        read_preferences(tmp_path / "d.xlsx")
    (tmp_path / "d.npz").write_text("x0,y\n1,1\n")  # a CSV under the wrong name
    with pytest.raises(ValueError, match="not a readable .npz"):
        read_preferences(tmp_path / "d.npz")
    (tmp_path / "d.jsonl").write_text('{"x": [1], "y": 1}\n{"x": [2], \n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_preferences(tmp_path / "d.jsonl")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_preferences(tmp_path / "e.csv")


def test_the_argparse_helpers_read_the_named_columns(tmp_path, pairs):
    x, y, w, _ = pairs
    pd.DataFrame({"u": x[:, 0], "v": x[:, 1], "pref": y, "q": w}).to_csv(
        tmp_path / "d.csv", index=False)
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    args = parser.parse_args(["--data", str(tmp_path / "d.csv"), "--features", "u,v",
                              "--label", "pref", "--weight", "q"])
    _check(data_from_args(args), x[:, :2], y, w)
    assert {"--data", "--features", "--label", "--weight", "--offset"} <= set(
        parser._option_string_actions)
