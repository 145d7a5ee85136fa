import numpy as np
import pytest
from PIL import Image

from retfound_hpo.data.formats import DatasetError, read_dataset


def make_aptos(root, rows, make_images=True):
    (root / "train_images").mkdir(parents=True)
    (root / "train.csv").write_text("id_code,diagnosis\n" + "".join(f"{i},{g}\n" for i, g in rows))
    if make_images:
        for i, _ in rows:
            Image.new("RGB", (8, 8)).save(root / "train_images" / f"{i}.png")
    return root / "train.csv", root / "train_images"


def test_aptos_native_layout(tmp_path):
    csv, images = make_aptos(tmp_path, [("000c1434d8d7", 2), ("001639a390f0", 0)])
    table = read_dataset("aptos", csv, images)
    assert list(table.columns) == ["id", "path", "grade", "patient"]
    assert table["grade"].tolist() == [2, 0]
    assert table["path"].iloc[0].endswith("train_images/000c1434d8d7.png")


def test_messidor_drops_ungradable(tmp_path):
    (tmp_path / "IMAGES").mkdir()
    names = ["20051020_43808_0100_PP.png", "IM002385.JPG", "20051020_44261_0100_PP.jpg"]
    for n in names:
        Image.new("RGB", (8, 8)).save(tmp_path / "IMAGES" / n, format="PNG")
    (tmp_path / "messidor_data.csv").write_text(
        "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
        f"{names[0]},0,0,1\n{names[1]},,,0\n{names[2]},3,1,1\n"
    )
    table = read_dataset("messidor", tmp_path / "messidor_data.csv", tmp_path / "IMAGES")
    assert table["id"].tolist() == [names[0], names[2]]
    assert table["grade"].tolist() == [0, 3]


@pytest.mark.parametrize(
    ("rows", "make_images", "message"),
    [
        ([("a", 0), ("b", 7)], True, r"row 3 \(diagnosis='7'\): grade must be an integer 0-4"),
        ([("a", 0), ("b", "x")], True, r"row 3 .*1 bad row"),
        ([("a", 0), ("a", 1)], True, "row 3: duplicate id 'a'"),
        ([("a", 0), ("b", 1)], False, r"row 2: image .*a.png not found; 2 missing"),
    ],
)
def test_bad_rows_are_named(tmp_path, rows, make_images, message):
    csv, images = make_aptos(tmp_path, rows, make_images)
    with pytest.raises(DatasetError, match=message):
        read_dataset("aptos", csv, images)


def test_missing_column_and_empty_csv(tmp_path):
    (tmp_path / "train.csv").write_text("id,label\nx,1\n")
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['id_code', 'diagnosis'\]"):
        read_dataset("aptos", tmp_path / "train.csv", tmp_path)
    (tmp_path / "train.csv").write_text("id_code,diagnosis\n")
    with pytest.raises(DatasetError, match="no rows"):
        read_dataset("aptos", tmp_path / "train.csv", tmp_path)


def test_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="'dicom' is not supported"):
        read_dataset("dicom", tmp_path / "x.csv", tmp_path)


def test_grades_are_integers(tmp_path):
    csv, images = make_aptos(tmp_path, [("a", 4)])
    assert read_dataset("aptos", csv, images)["grade"].dtype == np.int64
