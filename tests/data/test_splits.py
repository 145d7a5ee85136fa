import pandas as pd
import pytest

from retfound_hpo.core.errors import DatasetError
from retfound_hpo.data.splits import split_dataset, summarize_splits


def table(n_patients=200, eyes=2):
    rows = []
    for p in range(n_patients):
        for eye in ("left", "right")[:eyes]:
            left = [0, 0, 0, 1, 2, 2, 3, 4][p % 8]
            grade = left if eye == "left" or p % 2 == 0 else 0
            rows.append({"id": f"{p}_{eye}", "path": "", "grade": grade, "patient": str(p)})
    return pd.DataFrame(rows)


def test_patients_never_straddle_splits():
    splits = split_dataset(table(), 0.15, 0.15, seed=1)
    owners = {name: set(part["patient"]) for name, part in splits.items()}
    assert not owners["train"] & owners["val"]
    assert not owners["train"] & owners["test"]
    assert not owners["val"] & owners["test"]
    assert sum(len(p) for p in splits.values()) == 400


def test_split_is_stratified_and_seeded():
    a = split_dataset(table(), 0.15, 0.15, seed=1)
    b = split_dataset(table(), 0.15, 0.15, seed=1)
    c = split_dataset(table(), 0.15, 0.15, seed=2)
    assert a["test"]["id"].tolist() == b["test"]["id"].tolist()
    assert a["test"]["id"].tolist() != c["test"]["id"].tolist()
    for part in a.values():  # every grade appears in every split
        assert set(part["grade"]) == {0, 1, 2, 3, 4}


def test_too_rare_grade_is_an_error():
    t = table(80, eyes=1)
    t.loc[t["grade"] == 4, "grade"] = 3
    t.loc[0, "grade"] = 4
    with pytest.raises(DatasetError, match="grade 4 has 1 patient"):
        split_dataset(t, 0.15, 0.15, seed=0)


def test_summary_counts():
    splits = split_dataset(table(), 0.15, 0.15, seed=1)
    summary = summarize_splits(splits)
    assert sum(s["images"] for s in summary.values()) == 400
    assert summary["train"]["images"] == sum(summary["train"][f"grade_{g}"] for g in range(5))


def test_eyepacs_eyes_of_a_patient_share_a_split(tmp_path):
    from PIL import Image

    from retfound_hpo.data.formats import read_dataset

    (tmp_path / "train").mkdir()
    lines = ["image,level"]
    for p in range(10, 130):  # eyes of one patient often differ in grade
        left = [0, 0, 0, 1, 2, 2, 3, 4][p % 8]
        for eye, grade in (("left", left), ("right", left if p % 3 else 0)):
            lines.append(f"{p}_{eye},{grade}")
            Image.new("RGB", (4, 4)).save(tmp_path / "train" / f"{p}_{eye}.jpeg")
    (tmp_path / "trainLabels.csv").write_text("\n".join(lines) + "\n")
    table = read_dataset("eyepacs", tmp_path / "trainLabels.csv", tmp_path / "train")
    splits = split_dataset(table, 0.15, 0.15, seed=3)
    where = {i: name for name, part in splits.items() for i in part["id"]}
    assert len(where) == 240
    for p in range(10, 130):
        assert where[f"{p}_left"] == where[f"{p}_right"]
    for part in splits.values():  # rows still point at the labels file
        assert part.index.name == "row"
        assert all(lines[row - 1].startswith(i + ",") for row, i in part["id"].items())


def test_too_rare_grade_names_the_labels_file():
    t = table(80, eyes=1)
    t.loc[t["grade"] == 4, "grade"] = 3
    t.loc[0, "grade"] = 4
    with pytest.raises(DatasetError, match=r"^labels.csv: grade 4 has 1 .*1 grade\(s\) short"):
        split_dataset(t, 0.15, 0.15, seed=0, source="labels.csv")


def test_units_stay_in_one_split_whatever_the_seed():
    t = table()  # 200 patients, two eyes each
    # Merge patients in threes, as duplicate photographs of different patients would.
    units = t["patient"].map(lambda p: f"u{int(p) // 3}")
    for seed in range(20):
        splits = split_dataset(t, 0.15, 0.15, seed, units=units)
        owners = [set(units.loc[part.index]) for part in splits.values()]
        assert not owners[0] & owners[1] and not owners[0] & owners[2] and not owners[1] & owners[2]
        assert sum(len(p) for p in splits.values()) == 400


def test_too_rare_grade_counts_units_not_patients():
    t = table(80, eyes=1)  # 10 patients of grade 4
    fours = t.index[t["grade"] == 4]
    units = t["patient"].copy()
    units.loc[fours] = [f"merged{i // 2}" for i in range(len(fours))]  # 5 units of grade 4
    split_dataset(t, 0.15, 0.15, seed=0)  # 10 patients are enough
    with pytest.raises(DatasetError, match="grade 4 has 5 patient"):
        split_dataset(t, 0.15, 0.15, seed=0, units=units)


def test_a_grade_missing_from_the_data_is_refused_with_the_counts():
    t = table(80, eyes=1)
    t.loc[t["grade"] == 4, "grade"] = 3  # no grade 4 at all
    with pytest.raises(
        DatasetError, match=r"^l.csv: grade 4 has 0 patient\(s\) \(per grade: 0: 30"
    ):
        split_dataset(t, 0.15, 0.15, seed=0, source="l.csv", num_classes=5)
    one = t.assign(grade=0)  # a single grade: it would train and report 100 % accuracy
    with pytest.raises(DatasetError, match=r"grade 1 has 0 .*4 grade\(s\) short"):
        split_dataset(one, 0.15, 0.15, seed=0, num_classes=5)
    assert set(split_dataset(t, 0.15, 0.15, seed=0, num_classes=4)["val"]["grade"]) == {0, 1, 2, 3}


def test_fractions_that_leave_almost_no_train_split_are_refused():
    # 0.49 + 0.49 leaves train 2 %: every grade would need 50 patients to reach it.
    with pytest.raises(DatasetError, match=r"train \(0.02\).*needs at least 50 per grade"):
        split_dataset(table(), 0.49, 0.49, seed=0)
