import os
import warnings
from pathlib import Path

import pandas as pd
import pytest

from kaggle_utils.data import labels as data_labels
from kaggle_utils.data import sources
from kaggle_utils.data.labels import SourceError, SourceWarning


@pytest.fixture(scope="session")
def idrid(shared_data: Path) -> tuple[Path, Path]:
    root = shared_data / "idrid_train"
    return root / "labels.csv", root / "images"


def _link(src: Path, dst: Path) -> None:
    """Real image bytes under a new name, without copying megabytes."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _source_warnings(rec) -> list[str]:
    """The loader's own warnings: a recorder also catches whatever else fires meanwhile (CI's xdist worker
    once recorded 4 more, from something else running in it), which is not what is under test."""
    return [str(w.message) for w in rec if issubclass(w.category, SourceWarning)]


def test_shared_idrid_copy_loads_with_contract_columns(idrid):
    table = sources.load_idrid(*idrid)
    assert list(table.columns) == ["id", "path", "grade", "source", "dme_risk"]
    assert len(table) == 413
    assert str(table["grade"].dtype) == "Int64" and str(table["dme_risk"].dtype) == "Int64"
    assert table["grade"].value_counts().sort_index().tolist() == [134, 20, 136, 74, 49]  # README counts
    assert set(table["source"]) == {"idrid"}
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in table["path"])
    assert table.loc[0, "id"] == "IDRiD_001" and table.loc[0, "path"].endswith("IDRiD_001.jpg")


def test_official_idrid_header_trailing_space_and_empty_columns(idrid, tmp_path):
    labels, images = idrid
    shared = pd.read_csv(labels).head(6)
    rows = "".join(f"{r.id_code},{r.diagnosis},{r.dme_risk},,\n" for r in shared.itertuples())
    csv = _write(tmp_path / "a. IDRiD_Disease Grading_Training Labels.csv",
                 "Image name,Retinopathy grade,Risk of macular edema ,,\n" + rows + ",,,,\n,,,,\n")  # fmt: skip
    table = sources.load_idrid(csv, images)
    assert list(table.columns) == ["id", "path", "grade", "source", "dme_risk"]
    assert table["id"].tolist() == shared["id_code"].tolist()
    assert table["grade"].tolist() == shared["diagnosis"].tolist()
    assert table["dme_risk"].tolist() == shared["dme_risk"].tolist()


def test_aptos_train_and_unlabelled_test(raw_dir, tmp_path):
    ids = ["000c1434d8d7", "00a8624548a9", "1ae3c58759fb"]
    for i in ids:
        _link(raw_dir / f"aptos_{i}.png", tmp_path / "train_images" / f"{i}.png")
    train = sources.load_aptos(
        _write(tmp_path / "train.csv", "id_code,diagnosis\n" + "".join(f"{i},{g}\n" for i, g in zip(ids, [2, 2, 0], strict=True))),
        tmp_path / "train_images",
    )  # fmt: skip
    assert train["id"].tolist() == ids and train["grade"].tolist() == [2, 2, 0]
    assert train["path"].tolist() == [str(tmp_path / "train_images" / f"{i}.png") for i in ids]
    test = sources.load_aptos(
        _write(tmp_path / "test.csv", "id_code\n" + "\n".join(ids) + "\n"), tmp_path / "train_images"
    )
    assert test["grade"].isna().all() and str(test["grade"].dtype) == "Int64"
    assert list(test.columns) == ["id", "path", "grade", "source"]


def test_ids_stay_text(idrid, tmp_path):
    """Hex ids like '12e4' or '0083' must not be parsed as numbers."""
    _, images = idrid
    for i in ("12e4", "0083"):
        _link(images / "IDRiD_001.jpg", tmp_path / "img" / f"{i}.png")
    table = sources.load_aptos(
        _write(tmp_path / "t.csv", "id_code,diagnosis\n12e4,1\n0083,0\n"), tmp_path / "img"
    )
    assert table["id"].tolist() == ["12e4", "0083"]


def test_eyepacs_adds_patient_and_eye(idrid, tmp_path):
    _, images = idrid
    names = ["10_left", "10_right", "13_left"]
    for n, src in zip(names, ["IDRiD_001", "IDRiD_002", "IDRiD_003"], strict=True):
        _link(images / f"{src}.jpg", tmp_path / "train" / f"{n}.jpeg")
    csv = _write(tmp_path / "trainLabels.csv", "image,level\n10_left,0\n10_right,1\n13_left,4\n")
    table = sources.load_source("eyepacs", csv, tmp_path / "train")
    assert table["grade"].tolist() == [0, 1, 4]
    assert table["patient"].tolist() == ["10", "10", "13"] and table["eye"].tolist() == [
        "left",
        "right",
        "left",
    ]
    assert set(table["source"]) == {"eyepacs"}


def _messidor(tmp_path: Path, images: Path) -> Path:
    for n in ("IDRiD_001", "IDRiD_002", "IDRiD_003"):
        _link(images / f"{n}.jpg", tmp_path / "m2" / f"{n}.jpg")
    return _write(
        tmp_path / "messidor_data.csv",
        "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
        "IDRiD_001.JPG,0,0,1\nIDRiD_002.jpg,,,0\nIDRiD_003.jpg,3,1,1\n",
    )


def test_messidor_ungradable_raises_then_skips(idrid, tmp_path):
    csv = _messidor(tmp_path, idrid[1])
    with pytest.raises(SourceError) as err:
        sources.load_messidor(csv, tmp_path / "m2")
    assert "row 3 id='IDRiD_002.jpg'" in str(err.value) and "adjudicated_gradable is 0" in str(err.value)
    assert err.value.report["kind"].tolist() == ["ungradable"]
    with pytest.warns(SourceWarning, match=r"skipped 1 of 3 rows \(ungradable: 1\)"):
        table, report = sources.load_messidor(csv, tmp_path / "m2", on_error="skip", return_report=True)
    assert table["id"].tolist() == ["IDRiD_001.JPG", "IDRiD_003.jpg"]
    assert table["path"].iloc[0].endswith("IDRiD_001.jpg")  # extension case resolved against the folder
    assert table["grade"].tolist() == [0, 3] and table["dme"].tolist() == [0, 1]
    assert report[["row", "id", "kind"]].values.tolist() == [[3, "IDRiD_002.jpg", "ungradable"]]


def test_bad_rows_are_listed_with_reasons(idrid, tmp_path):
    labels, images = idrid
    csv = _write(
        tmp_path / "labels.csv",
        "id_code,diagnosis,dme_risk\n"
        "IDRiD_001,2,0\n"  # ok
        "IDRiD_999,1,0\n"  # no such image
        "IDRiD_002,2.5,0\n"  # not an integer
        "IDRiD_003,7,0\n"  # out of range
        "IDRiD_004,x,0\n"  # not a number
        "IDRiD_005,,0\n"  # empty grade in a labelled file
        "IDRiD_006,3,0\n"  # ok
        "IDRiD_006,3,0\n"  # repeated, same grade: the later row is the bad one
        "IDRiD_007,1,0\n"
        "IDRiD_007,2,0\n"  # conflicting grades: both rows are bad
        "IDRiD_008,2.0,1\n",  # '2.0' is grade 2
    )
    with pytest.raises(SourceError) as err:
        sources.load_idrid(csv, images)
    msg = str(err.value)
    assert str(csv) in msg and "on_error='skip'" in msg
    for needle in ("row 3 id='IDRiD_999'", "image not found", "'2.5' is not an integer 0-4", "'7'", "'x'",
                   "row 7 id='IDRiD_005': empty grade", "row 9 id='IDRiD_006': id repeated (first at row 8)",
                   "conflicting grades"):  # fmt: skip
        assert needle in msg
    with pytest.warns(SourceWarning) as rec:
        table, report = sources.load_idrid(csv, images, on_error="skip", return_report=True)
    ours = _source_warnings(rec)
    assert len(ours) == 1 and "skipped 8 of 11 rows" in ours[0], ours
    assert table["id"].tolist() == ["IDRiD_001", "IDRiD_006", "IDRiD_008"]
    assert table["grade"].tolist() == [2, 3, 2]
    kinds = report.groupby("kind")["row"].apply(list).to_dict()
    assert kinds == {
        "missing_image": [3], "bad_grade": [4, 5, 6], "missing_grade": [7], "duplicate_id": [9, 10, 11],
    }  # fmt: skip


def test_long_error_lists_are_truncated_with_a_count(idrid, tmp_path):
    rows = "".join(f"nope_{i},1\n" for i in range(30))
    with pytest.raises(SourceError) as err:
        sources.load_aptos(_write(tmp_path / "t.csv", "id_code,diagnosis\n" + rows), idrid[1])
    msg = str(err.value)
    assert "30 bad row(s) of 30" in msg and "... and 10 more" in msg
    assert msg.count("image not found") == data_labels.MAX_LISTED
    assert len(err.value.report) == 30


def test_generic_finds_any_extension_and_reports_ambiguity(idrid, tmp_path):
    _, images = idrid
    d = tmp_path / "imgs"
    _link(images / "IDRiD_001.jpg", d / "a.png")
    _link(images / "IDRiD_002.jpg", d / "b.JPG")
    _link(images / "IDRiD_003.jpg", d / "c.jpg")
    _link(images / "IDRiD_004.jpg", d / "c.tif")
    _link(images / "IDRiD_005.jpg", d / "sub" / "e.jpg")
    csv = _write(tmp_path / "x.csv", "name,g,note\na,0,p\nb,1,q\nc,2,r\n")
    with pytest.raises(SourceError, match=r"several images match: c\.jpg, c\.tif"):
        sources.load_generic(csv, d, id_col="name", grade_col="g")
    with pytest.warns(SourceWarning, match="ambiguous_image: 1"):
        table = sources.load_generic(csv, d, id_col="name", grade_col="g", on_error="skip", source="mine")
    assert table["path"].tolist() == [str(d / "a.png"), str(d / "b.JPG")]
    assert table["note"].tolist() == ["p", "q"] and set(table["source"]) == {"mine"}

    csv2 = _write(tmp_path / "y.csv", "name,file\ne,sub/e.jpg\na,a.png\n")
    table = sources.load_generic(csv2, d, id_col="name", path_col="file")
    assert table["path"].tolist() == [str(d / "sub" / "e.jpg"), str(d / "a.png")]
    assert table["grade"].isna().all() and list(table.columns) == ["id", "path", "grade", "source"]


def test_errors_name_the_file_and_the_problem(idrid, tmp_path):
    labels, images = idrid
    with pytest.raises(SourceError, match="label file not found"):
        sources.load_aptos(tmp_path / "nope.csv", images)
    with pytest.raises(SourceError, match="image folder not found"):
        sources.load_idrid(labels, tmp_path / "nope")
    with pytest.raises(SourceError, match=r"missing column\(s\) \['diagnosis'\]|missing column"):
        sources.load_generic(
            _write(tmp_path / "a.csv", "id_code\nx\n"), images, "id_code", grade_col="diagnosis"
        )
    with pytest.raises(ValueError, match="unknown source kind 'kaggle'"):
        sources.load_source("kaggle", labels, images)
    with pytest.raises(ValueError, match="on_error"):
        sources.load_idrid(labels, images, on_error="ignore")


def test_validate_any_table(idrid):
    table = sources.load_idrid(*idrid).head(4).copy()
    same, report = data_labels.validate(table)
    assert report.empty and same.equals(table)
    table["grade"] = table["grade"].astype(object)
    table.loc[1, "grade"] = 9
    table.loc[2, "path"] = "/nonexistent/x.jpg"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        kept, report = data_labels.validate(table, on_error="skip")
    ours = _source_warnings(rec)
    assert len(ours) == 1 and "skipped 2 of 4 rows" in ours[0], ours
    assert kept.index.tolist() == [0, 3] and str(kept["grade"].dtype) == "Int64"
    assert report["kind"].tolist() == ["bad_grade", "missing_image"]


def test_combine_keeps_extras_and_refuses_duplicate_ids(idrid, tmp_path):
    labels, images = idrid
    a = sources.load_idrid(labels, images).head(3)
    _link(images / "IDRiD_004.jpg", tmp_path / "e" / "IDRiD_001.jpeg")
    _link(images / "IDRiD_005.jpg", tmp_path / "e" / "7_left.jpeg")
    e = sources.load_eyepacs(_write(tmp_path / "l.csv", "image,level\n7_left,1\n"), tmp_path / "e")
    both = sources.combine([a, e])
    assert list(both.columns) == ["id", "path", "grade", "source", "dme_risk", "patient", "eye"]
    assert both["grade"].tolist() == [3, 3, 2, 1] and str(both["grade"].dtype) == "Int64"
    assert both["dme_risk"].isna().tolist() == [False, False, False, True]

    clash = sources.load_eyepacs(_write(tmp_path / "m.csv", "image,level\nIDRiD_001,1\n"), tmp_path / "e")
    with pytest.raises(SourceError, match=r"id='IDRiD_001' in idrid, eyepacs"):
        sources.combine([a, clash])
    prefixed = sources.combine([a, clash], on_duplicate="prefix")
    assert prefixed["id"].tolist() == [
        "idrid_IDRiD_001",
        "idrid_IDRiD_002",
        "idrid_IDRiD_003",
        "eyepacs_IDRiD_001",
    ]
    with pytest.raises(SourceError):
        sources.combine([a, a], on_duplicate="prefix")
