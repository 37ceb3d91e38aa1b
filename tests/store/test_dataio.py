"""Reading data files against files that declare more than they should (issue 25, item 7): the
limits are checked from the headers, before any data is read, for the CLI's local reads too."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from pynomaly.store import dataio
from pynomaly.store.dataio import DataTooLargeError, load_table


def _header(shape, descr="<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_an_npz_declaring_terabytes_is_refused_not_allocated(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as z:  # a header alone: reading it would allocate 8 TB
        z.writestr("X.npy", _header((10**7, 10**5)))
    with pytest.raises(DataTooLargeError, match=r"10,000,000 x 100,000 float64 array, .* once read") as e:
        load_table(path)  # the default bound: this machine's memory
    assert e.value.limit == "bytes" and isinstance(e.value, ValueError)


def test_the_limits_are_the_callers(tmp_path):
    X = np.arange(60.0).reshape(20, 3)
    np.save(tmp_path / "x.npy", X)
    np.savez_compressed(tmp_path / "x.npz", X=X)
    (tmp_path / "x.csv").write_text("a,b,c\n" + "".join(f"{r[0]},{r[1]},{r[2]}\n" for r in X))
    for name in ("x.npy", "x.npz", "x.csv"):
        assert load_table(tmp_path / name, max_bytes=480, max_columns=3)[0].shape == (20, 3)
        with pytest.raises(DataTooLargeError, match="more than the 479 bytes allowed"):
            load_table(tmp_path / name, max_bytes=479)
        with pytest.raises(DataTooLargeError, match="3 columns, more than the 2 allowed") as e:
            load_table(tmp_path / name, max_columns=2)
        assert e.value.limit == "columns"


def test_a_npy_shorter_than_its_header_says_is_refused_before_reading(tmp_path):
    path = tmp_path / "short.npy"
    path.write_bytes(_header((1000, 10)) + bytes(80))
    with pytest.raises(dataio.InvalidInputError, match="declares a 1000 x 10 array but holds less data"):
        load_table(path)


def test_a_parquet_footer_is_bounded_before_it_is_parsed(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({f"c{i}": pa.array([0.5, 1.5]) for i in range(2000)}), path)
    assert load_table(path, max_columns=2000)[0].shape == (2, 2000)
    with pytest.raises(DataTooLargeError, match="footer"):
        load_table(path, max_columns=10)  # ~190 bytes of footer a column: refused before parsing it
    with pytest.raises(DataTooLargeError, match="2,000 columns, more than the 1,500 allowed"):
        load_table(path, max_columns=1500)


def test_csv_reading_keeps_its_meaning(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,a,b\nx1,1,4\n\nx2,2.5,3\n")
    X, names = load_table(path, columns=["a", "b"])
    assert names == ["a", "b"] and X.shape == (2, 2) and X[1].tolist() == [2.5, 3.0]
    with pytest.raises(dataio.InvalidInputError, match=r"non-numeric column\(s\) \['id'\]"):
        load_table(path)
    path.write_text("a,b\n1,NA\n")
    with pytest.raises(dataio.InvalidInputError, match=r"column\(s\) \['b'\] contain missing"):
        load_table(path)
    path.write_text("1,2\n3\n")
    with pytest.raises(dataio.InvalidInputError, match="line 2 has 1 fields, expected 2"):
        load_table(path)
