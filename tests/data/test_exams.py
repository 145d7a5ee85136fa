"""Exam lists in Messidor-2's layout (messidor-2.csv): read, matched, and refused when bad."""

import pytest

from retfound_hpo.core.errors import DatasetError
from retfound_hpo.data.formats import read_dataset

MESSIDOR_HEADER = "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"


@pytest.fixture
def messidor(tmp_path):
    """Six images (one ungradable) of three exams, named as Messidor-2 names them."""
    images = tmp_path / "IMAGES"
    images.mkdir()
    names = [f"2005101{i}_4380{i}_0100_PP.png" for i in range(4)] + ["IM000013.JPG", "IM000014.JPG"]
    for name in names:
        (images / name).write_bytes(b"")
    rows = [f"{n},{g},0,1\n" for n, g in zip(names[:5], [0, 2, 1, 1, 3], strict=True)]
    rows.append(f"{names[5]},,,0\n")  # ungradable: dropped, its fellow eye stays
    (tmp_path / "messidor_data.csv").write_text(MESSIDOR_HEADER + "".join(rows))
    return tmp_path, names


def read(root, exams_text: str | None, sep: str = ";"):
    exams = None
    if exams_text is not None:
        exams = root / "messidor-2.csv"
        exams.write_text(exams_text.replace(";", sep))
    return read_dataset(
        "messidor", root / "messidor_data.csv", root / "IMAGES", exams=exams and str(exams)
    )


def exam_list(names, header="left;right", swap_case=False) -> str:
    pairs = [(names[0], names[1]), (names[2], names[3]), (names[4], names[5])]
    if swap_case:  # the grades file and the exam list may spell extensions differently
        pairs = [(a.upper(), b.replace(".png", ".tif")) for a, b in pairs]
    return header + "\n" + "".join(f"{a};{b}\n" for a, b in pairs)


@pytest.mark.parametrize("sep", [";", ","])
def test_exam_list_pairs_the_two_eyes(messidor, sep):
    root, names = messidor
    table = read(root, exam_list(names, header="Left ; Right", swap_case=True), sep)
    assert table["exam"].tolist() == [
        names[0].removesuffix(".png").lower(),
    ] * 2 + [names[2].removesuffix(".png").lower()] * 2 + ["im000013"]
    assert "exam" not in read(root, None).columns  # without a list: no exams


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("left;right\nA.png;\n", "messidor-2.csv: row 2: empty right image"),
        ("left\nA.png\n", "no 'left' and 'right' columns (found ['left'])"),
        ("", "empty exam list"),
        ("left;right\n{0};{0}\n", "row 2: left and right are the same image"),
        ("left;right\n{0};{1}\n{2};{1}\n", "row 3: image '{1}' is already in the exam of row 2"),
        (
            "left;right\n{0};{1}\n{2};{3}\n",
            "messidor_data.csv: row 6: image 'IM000013.JPG' is in no exam of",
        ),
    ],
)
def test_bad_exam_lists_are_one_line_naming_the_row(messidor, text, message):
    root, names = messidor
    with pytest.raises(DatasetError) as info:
        read(root, text.format(*names))
    assert message.format(*names) in str(info.value) and "\n" not in str(info.value)


def test_missing_exam_list(messidor):
    root, _ = messidor
    with pytest.raises(DatasetError, match=r"nope.csv: exam list not found"):
        read_dataset("messidor", root / "messidor_data.csv", root / "IMAGES", exams="nope.csv")
