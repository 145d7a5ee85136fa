"""Readers, each on files in its dataset's native layout (names included), and bad label files."""

import logging

import numpy as np
import pytest
from PIL import Image

from retfound_hpo.core.errors import DatasetError
from retfound_hpo.data.formats import read_dataset


def image(path, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (90, 40, 20)).save(path, format=fmt)


def make_aptos(root, rows, make_images=True):
    (root / "train_images").mkdir(parents=True)
    (root / "train.csv").write_text("id_code,diagnosis\n" + "".join(f"{i},{g}\n" for i, g in rows))
    if make_images:
        for i, _ in rows:
            if i:
                image(root / "train_images" / f"{i}.png")
    return root / "train.csv", root / "train_images"


def test_aptos_native_layout(tmp_path):
    csv, images = make_aptos(tmp_path, [("000c1434d8d7", 2), ("001639a390f0", 0)])
    table = read_dataset("aptos", csv, images)
    assert list(table.columns) == ["id", "path", "grade", "patient"]
    assert table["grade"].tolist() == [2, 0]
    assert table["path"].iloc[0].endswith("train_images/000c1434d8d7.png")
    assert table.index.name == "row" and table.index.tolist() == [2, 3]  # labels-file lines


def test_eyepacs_native_layout_groups_eyes_by_patient(tmp_path):
    (tmp_path / "trainLabels.csv").write_text(
        "image,level\n10_left,0\n10_right,0\n13_left,0\n13_right,0\n15_left,1\n15_right,2\n"
    )
    for name in ("10_left", "10_right", "13_left", "13_right", "15_left", "15_right"):
        image(tmp_path / "train" / f"{name}.jpeg", "JPEG")
    table = read_dataset("eyepacs", tmp_path / "trainLabels.csv", tmp_path / "train")
    assert table["patient"].tolist() == ["10", "10", "13", "13", "15", "15"]
    assert table["grade"].tolist() == [0, 0, 0, 0, 1, 2]
    assert table["path"].iloc[5].endswith("train/15_right.jpeg")


def test_eyepacs_name_without_eye_is_an_error(tmp_path):
    (tmp_path / "trainLabels.csv").write_text("image,level\n10_left,0\nscan_0042,1\n")
    image(tmp_path / "train" / "10_left.jpeg", "JPEG")
    image(tmp_path / "train" / "scan_0042.jpeg", "JPEG")
    with pytest.raises(DatasetError, match=r"row 3: id 'scan_0042': name is not <patient>_left"):
        read_dataset("eyepacs", tmp_path / "trainLabels.csv", tmp_path / "train")


def test_messidor_drops_ungradable(tmp_path):
    names = ["20051020_43808_0100_PP.png", "IM002385.JPG", "20051020_44261_0100_PP.jpg"]
    for n in names:
        image(tmp_path / "IMAGES" / n, "PNG")
    (tmp_path / "messidor_data.csv").write_text(
        "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
        f"{names[0]},0,0,1\n{names[1]},,,0\n{names[2]},3,1,1\n"
    )
    table = read_dataset("messidor", tmp_path / "messidor_data.csv", tmp_path / "IMAGES")
    assert table["id"].tolist() == [names[0], names[2]]
    assert table["grade"].tolist() == [0, 3]
    assert table.index.tolist() == [2, 4]


def messidor(root, flags, grades=None):
    """A Messidor-2 folder whose rows carry `flags` as adjudicated_gradable, one image each."""
    names = [f"IM{i:06d}.jpg" for i in range(len(flags))]
    for name in names:
        image(root / "IMAGES" / name, "JPEG")
    grades = grades or [i % 5 for i in range(len(flags))]
    body = "".join(f"{n},{g},0,{f}\n" for n, g, f in zip(names, grades, flags, strict=True))
    csv = root / "messidor_data.csv"
    csv.write_text("image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n" + body)
    return csv, root / "IMAGES"


GRADABLE = ["1", "1.0", "true", "TRUE", "True", "yes", "YES", "y", "Y", "t", "T"]
UNGRADABLE = ["0", "0.0", "false", "FALSE", "False", "no", "NO", "n", "N", "f", "F"]


@pytest.mark.parametrize(
    ("spelling", "kept"), [(s, True) for s in GRADABLE] + [(s, False) for s in UNGRADABLE]
)
def test_messidor_gradable_flag_spellings(tmp_path, spelling, kept):
    csv, images = messidor(tmp_path, ["1", spelling, "0"])
    table = read_dataset("messidor", csv, images)
    assert table.index.tolist() == ([2, 3] if kept else [2])


@pytest.mark.parametrize("value", ["", "2", "maybe", "gradable", "-1", "0.5"])
def test_messidor_bad_gradable_flag_is_a_bad_row(tmp_path, value, caplog):
    csv, images = messidor(tmp_path, ["1", "1", value, "yes"])
    with pytest.raises(DatasetError) as info:
        read_dataset("messidor", csv, images)
    assert str(info.value) == (
        f"{csv}: row 4 (adjudicated_gradable={value!r}): must be 1/0, true/false, yes/no, y/n or "
        "t/f (any case); 1 bad row(s) (skip_bad_rows: true skips them)"
    )
    with caplog.at_level(logging.WARNING, logger="retfound_hpo.data.formats"):
        table = read_dataset("messidor", csv, images, skip_bad_rows=True)
    assert table.index.tolist() == [2, 3, 5]
    assert [r.getMessage() for r in caplog.records] == [
        f"{csv}: row 4 (adjudicated_gradable={value!r}): must be 1/0, true/false, yes/no, y/n or "
        "t/f (any case); skipped"
    ]


def test_every_row_dropped_says_why(tmp_path):
    csv, images = messidor(tmp_path / "a", ["0"] * 12)
    with pytest.raises(DatasetError) as info:
        read_dataset("messidor", csv, images)
    assert str(info.value) == (
        f"{csv}: all 12 rows are ungradable (adjudicated_gradable false); "
        "no image left to train or evaluate on"
    )
    csv, images = messidor(tmp_path / "b", ["0", "x", "no", "?"])
    with pytest.raises(DatasetError, match=r"none of the 4 rows is usable: 2 ungradable, 2 bad;"):
        read_dataset("messidor", csv, images, skip_bad_rows=True)
    csv, images = messidor(tmp_path / "c", ["0", "1", "1"], grades=[0, 7, 9])
    with pytest.raises(DatasetError, match=r"messidor_data.csv: all 2 gradable rows are bad and w"):
        read_dataset("messidor", csv, images, skip_bad_rows=True)


def test_messidor_extension_case_differs_from_disk(tmp_path):
    image(tmp_path / "IMAGES" / "IM002385.JPG", "JPEG")  # the labels say .jpg
    (tmp_path / "messidor_data.csv").write_text(
        "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\nIM002385.jpg,1,0,1\n"
    )
    table = read_dataset("messidor", tmp_path / "messidor_data.csv", tmp_path / "IMAGES")
    assert table["path"].iloc[0].endswith("IMAGES/IM002385.JPG")


def test_name_in_another_unicode_form_finds_the_file(tmp_path):
    # The labels were typed on macOS (NFD: e + combining accent), the files listed on Linux (NFC).
    image(tmp_path / "train_images" / "r\u00e9tine_01.png")
    nfd = "re\u0301tine_01"
    (tmp_path / "train.csv").write_text(f"id_code,diagnosis\n{nfd},1\n", encoding="utf-8")
    table = read_dataset("aptos", tmp_path / "train.csv", tmp_path / "train_images")
    assert table["path"].iloc[0].endswith("train_images/r\u00e9tine_01.png")
    assert table["id"].iloc[0] == nfd  # the id stays as the labels file spells it


def test_idrid_native_layout(tmp_path):
    images = tmp_path / "B. Disease Grading" / "1. Original Images" / "a. Training Set"
    labels = tmp_path / "B. Disease Grading" / "2. Groundtruths"
    for i in (1, 2, 3):
        image(images / f"IDRiD_{i:03d}.jpg", "JPEG")
    labels.mkdir(parents=True)
    csv = labels / "a. IDRiD_Disease Grading_Training Labels.csv"
    # As downloaded: byte-order mark, trailing space in a name, empty columns and rows.
    csv.write_text(
        "\ufeffImage name,Retinopathy grade,Risk of macular edema ,,,\n"
        "IDRiD_001,3,2,,,\nIDRiD_002,0,0,,,\nIDRiD_003,4,1,,,\n,,,,,\n,,,,,\n",
        encoding="utf-8",
    )
    table = read_dataset("idrid", csv, images)
    assert table["id"].tolist() == ["IDRiD_001", "IDRiD_002", "IDRiD_003"]
    assert table["grade"].tolist() == [3, 0, 4]
    assert table["path"].iloc[0].endswith("a. Training Set/IDRiD_001.jpg")
    assert table["patient"].nunique() == 3


def test_generic_csv_with_mapping_template_and_patient(tmp_path):
    (tmp_path / "labels.csv").write_text("file,dr,pid,site\nA1,2,p1,x\nA2,0,p1,x\nB1,4,p2,y\n")
    for name, grade in (("A1", 2), ("A2", 0), ("B1", 4)):
        image(tmp_path / "img" / str(grade) / f"{name}.tif", "TIFF")
    mapping = dict(id_column="file", label_column="dr", patient_column="pid")
    table = read_dataset(
        "csv", tmp_path / "labels.csv", tmp_path / "img",
        **mapping, path_template="{label}/{id}", extension=".tif",
    )  # fmt: skip
    assert table["patient"].tolist() == ["p1", "p1", "p2"]
    assert table["path"].iloc[2].endswith("img/4/B1.tif")
    # Without a patient column every image is its own patient; an extension alone suffices.
    for name in ("A1", "A2", "B1"):
        image(tmp_path / "flat" / f"{name}.png")
    table = read_dataset(
        "csv", tmp_path / "labels.csv", tmp_path / "flat",
        id_column="file", label_column="dr", extension=".png",
    )  # fmt: skip
    assert table["patient"].tolist() == ["A1", "A2", "B1"]


BAD_MAPPINGS = [
    ({"label_column": "dr"}, "format 'csv' needs id_column and label_column"),
    ({"id_column": "id", "label_column": "dr", "path_template": "{name}.png"}, "{name}"),
    ({"id_column": "file", "label_column": "grade"}, r"missing column\(s\) \['file', 'grade'\]"),
    ({"id_column": "id", "label_column": "dr", "patient_column": "pid"}, "row 3: id 'b': empty"),
]


@pytest.mark.parametrize(("options", "message"), BAD_MAPPINGS)
def test_generic_csv_bad_mapping(tmp_path, options, message):
    (tmp_path / "labels.csv").write_text("id,dr,pid\na,1,p\nb,2,\n")
    image(tmp_path / "a", "PNG")
    image(tmp_path / "b", "PNG")
    with pytest.raises(DatasetError, match=message):
        read_dataset("csv", tmp_path / "labels.csv", tmp_path, **options)


def test_mapping_options_belong_to_format_csv(tmp_path):
    csv, images = make_aptos(tmp_path, [("a", 1)])
    with pytest.raises(DatasetError, match=r"\['id_column'\] apply only to format 'csv'"):
        read_dataset("aptos", csv, images, id_column="id_code")
    with pytest.raises(DatasetError, match=r"unknown reader option\(s\) \['skip_rows'\]"):
        read_dataset("aptos", csv, images, skip_rows=True)


@pytest.mark.parametrize(
    ("rows", "make_images", "message"),
    [
        ([("a", 0), ("b", 7)], True, r"row 3 \(diagnosis='7'\): grade must be an integer 0-4"),
        ([("a", 0), ("b", "x")], True, r"row 3 .*1 bad row"),
        ([("a", 2.5), ("b", -1), ("c", "")], True, r"row 2 \(diagnosis='2.5'\).*; 3 bad row"),
        ([("a", 0), ("a", 1)], True, "row 3: duplicate id 'a'; 1 duplicate"),
        ([("a", 0), ("", 1)], True, r"row 3: empty id; 1 row\(s\) without id"),
        ([("a", 0), ("b", 1)], False, r"row 2: image .*a.png not found; 2 missing"),
    ],
)
def test_bad_rows_are_named(tmp_path, rows, make_images, message):
    csv, images = make_aptos(tmp_path, rows, make_images)
    with pytest.raises(DatasetError, match=message) as info:
        read_dataset("aptos", csv, images)
    assert str(csv) in str(info.value) and "skip_bad_rows" in str(info.value)


def test_skip_bad_rows_logs_each_and_keeps_the_rest(tmp_path, caplog):
    rows = [("a", 0), ("b", 9), ("c", 1), ("c", 2), ("d", 3), ("e", 4)]
    csv, images = make_aptos(tmp_path, rows)
    (images / "d.png").unlink()
    with caplog.at_level(logging.WARNING, logger="retfound_hpo.data.formats"):
        table = read_dataset("aptos", csv, images, skip_bad_rows=True)
    assert table["id"].tolist() == ["a", "c", "e"]
    assert table.index.tolist() == [2, 4, 7]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3
    assert "row 3 (diagnosis='9')" in warned[0] and "row 5: duplicate id 'c'" in warned[1]
    assert "row 6: image" in warned[2] and warned[2].endswith("skipped")


def test_skip_bad_rows_still_needs_some_rows(tmp_path):
    csv, images = make_aptos(tmp_path, [("a", 8), ("b", 9)])
    with pytest.raises(DatasetError, match="train.csv: all 2 rows are bad and were skipped; no im"):
        read_dataset("aptos", csv, images, skip_bad_rows=True)


def test_missing_column_and_empty_csv(tmp_path):
    (tmp_path / "train.csv").write_text("id,label\nx,1\n")
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['id_code', 'diagnosis'\]"):
        read_dataset("aptos", tmp_path / "train.csv", tmp_path)
    (tmp_path / "train.csv").write_text("id_code,diagnosis\n")
    with pytest.raises(DatasetError, match="no rows"):
        read_dataset("aptos", tmp_path / "train.csv", tmp_path)
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(DatasetError, match=r"train.csv: empty file"):
        read_dataset("aptos", tmp_path / "train.csv", tmp_path, skip_bad_rows=True)
    with pytest.raises(DatasetError, match="labels file not found"):
        read_dataset("aptos", tmp_path / "nope.csv", tmp_path)


def test_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="'dicom' is not supported"):
        read_dataset("dicom", tmp_path / "x.csv", tmp_path)


def test_grades_are_integers(tmp_path):
    csv, images = make_aptos(tmp_path, [("a", 4), ("b", "2.0")])
    assert read_dataset("aptos", csv, images)["grade"].dtype == np.int64
