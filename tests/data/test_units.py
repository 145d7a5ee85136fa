"""The resampling unit: connected groups of patient, exam and duplicate group."""

import pandas as pd

from retfound_hpo.data.units import describe_units, resampling_units


def table(patients, exams=None, duplicates=None) -> pd.DataFrame:
    t = pd.DataFrame({"id": [f"img{i}" for i in range(len(patients))], "patient": patients})
    if exams is not None:
        t["exam"] = exams
    if duplicates is not None:
        t["duplicate_group"] = duplicates
    return t


def test_patients_exams_and_duplicates_join_transitively():
    # a-b share an exam, b-c a duplicate, d alone, e's two images one patient
    t = table(
        ["a", "b", "c", "d", "e", "e"],
        exams=["x1", "x1", "", "x2", "", ""],
        duplicates=["", "dup0", "dup0", "", "", ""],
    )
    units = resampling_units(t)
    assert units.index.equals(t.index)
    assert units.tolist() == ["a", "a", "a", "d", "e", "e"]
    info = describe_units(t, units)
    assert (info["unit"], info["units"]) == ("patient + exam + duplicate group", 3)


def test_independent_images_are_said_to_be_so():
    t = table(["a", "b", "c"], exams=["", "", ""], duplicates=["", "", ""])
    assert resampling_units(t).tolist() == ["a", "b", "c"]
    info = describe_units(t)
    assert (info["unit"], info["units"]) == ("image", 3)
    assert "treated as independent" in info["unit_note"]
    # no patient column: each image's id names its unit
    assert resampling_units(pd.DataFrame({"id": ["x", "y"]})).tolist() == ["x", "y"]


def test_a_duplicated_image_makes_the_unit_count_drop():
    t = table(["a", "b", "c", "d"])
    assert describe_units(t)["units"] == 4
    t["duplicate_group"] = ["dup0", "", "dup0", ""]  # c is a copy of a
    assert describe_units(t)["units"] == 3 and describe_units(t)["unit"] == "duplicate group"
