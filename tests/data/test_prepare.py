"""The prepare-split stage end to end: bad input stops it before any cache, in one line;
duplicate photographs share a split and are reported."""

import dataclasses
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from test_duplicates import copy_of, eye
from test_preprocess import assert_no_cache

from conftest import fundus_like, run_prepare
from retfound_hpo.core.errors import ConfigError, DatasetError
from retfound_hpo.core.params_yaml import load_params
from retfound_hpo.data.prepared import load_prepared

REPO = Path(__file__).resolve().parents[2]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d \S+: ")  # cli.run_stage's logging format


def aptos_folder(root, n=40):
    (root / "train_images").mkdir(parents=True)
    rows = [(f"{i:012x}", i % 5) for i in range(n)]
    for i, (name, _) in enumerate(rows):
        img = fundus_like(np.random.default_rng(i), size=24, border=4)
        Image.fromarray(img).save(root / "train_images" / f"{name}.png")
    return rows


def messidor_folder(root, flags, grades):
    """A Messidor-2 folder (evaluation data) with one image per flag."""
    (root / "IMAGES").mkdir(parents=True)
    names = [f"IM{i:06d}.jpg" for i in range(len(flags))]
    for i, name in enumerate(names):
        img = fundus_like(np.random.default_rng(100 + i), size=24, border=4)
        Image.fromarray(img).save(root / "IMAGES" / name, quality=90)
    body = "".join(f"{n},{g},0,{f}\n" for n, g, f in zip(names, grades, flags, strict=True))
    header = "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
    (root / "messidor_data.csv").write_text(header + body)
    return {
        "name": "domain_b",
        "format": "messidor",
        "csv": str(root / "messidor_data.csv"),
        "images": str(root / "IMAGES"),
    }


def stage_params(tmp_path, model=None, evaluate=None, **data):
    raw = {
        "data": {
            "csv": str(tmp_path / "aptos" / "train.csv"),
            "images": str(tmp_path / "aptos" / "train_images"),
            "prepared_dir": str(tmp_path / "prepared"),
            "splits_dir": str(tmp_path / "splits"),
            "demo": {"enabled": False, "out_dir": str(tmp_path / "demo")},
            **data,
        },
        "model": {"input_size": 32, **(model or {})},
        "hpo": {"search_space": {"lora_r": {"type": "categorical", "choices": [4]}}},
        **({"evaluate": evaluate} if evaluate else {}),
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(tmp_path / "params.yaml")


def damage(kind, root, rows):
    images = root / "train_images"
    if kind == "grade":
        rows[5] = (rows[5][0], "5")
    elif kind == "duplicate":
        rows[7] = (rows[3][0], rows[7][1])
    elif kind == "missing":
        (images / f"{rows[4][0]}.png").unlink()
    elif kind == "unreadable":
        (images / f"{rows[9][0]}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    elif kind == "dark":  # a failed exposure: the camera saw nothing
        Image.new("RGB", (32, 24)).save(images / f"{rows[9][0]}.png")
    elif kind == "rare":
        rows[:] = [(i, 3 if g == 4 else g) for i, g in rows]
        rows[0] = (rows[0][0], 4)
    header = "id_code,grade" if kind == "column" else "id_code,diagnosis"
    body = "" if kind == "empty" else "".join(f"{i},{g}\n" for i, g in rows)
    (root / "train.csv").write_text(header + "\n" + body)


def assert_nothing_written(tmp_path):
    for name in ("train", "val", "test", "domain_b"):
        assert_no_cache(tmp_path / "prepared" / name)
    assert not list((tmp_path / "splits").glob("*.csv"))
    assert not (tmp_path / "results").exists()  # the stage's summary.json


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("grade", r"train.csv: row 7 \(diagnosis='5'\): grade must be an integer 0-4; 1 bad"),
        ("duplicate", r"train.csv: row 9: duplicate id '000000000003'; 1 duplicate"),
        ("missing", r"train.csv: row 6: image .*000000000004.png not found; 1 missing"),
        ("column", r"train.csv: missing column\(s\) \['diagnosis'\]"),
        ("empty", r"train.csv: no rows"),
        ("rare", r"train.csv: grade 4 has 1 patient"),
        ("unreadable", r"train.csv: 1 unusable image\(s\) of \d+: row 11 .*000000000009.png"),
        ("dark", r"train.csv: 1 unusable image\(s\) of \d+: row 11 .*9.png \(no retina found: "),
    ],
)
def test_bad_input_stops_the_stage_before_any_cache(tmp_path, kind, message):
    rows = aptos_folder(tmp_path / "aptos")
    damage(kind, tmp_path / "aptos", rows)
    with pytest.raises(DatasetError, match=message):
        run_prepare(stage_params(tmp_path))
    assert_nothing_written(tmp_path)


def test_stage_skips_bad_rows_when_asked(tmp_path, caplog):
    rows = aptos_folder(tmp_path / "aptos", n=46)
    rows[5] = (rows[5][0], "x")
    (tmp_path / "aptos" / "train_images" / f"{rows[9][0]}.png").write_bytes(b"garbage")
    Image.new("RGB", (32, 24)).save(tmp_path / "aptos" / "train_images" / f"{rows[12][0]}.png")
    damage("none", tmp_path / "aptos", rows)
    with caplog.at_level(logging.WARNING):
        summary = run_prepare(stage_params(tmp_path, skip_bad_rows=True))
    assert sum(summary[s]["images"] for s in ("train", "val", "test")) == 43
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 3 and sum("no retina found" in m for m in skipped) == 1
    for name in ("train", "val", "test"):
        split = pd.read_csv(tmp_path / "splits" / f"{name}.csv", dtype={"id": str})
        _, index = load_prepared(tmp_path / "prepared" / name)
        assert split["id"].tolist() == index["id"].tolist()
        assert rows[12][0] not in split["id"].tolist()


def test_grade_above_num_classes_stops_before_any_cache(tmp_path):
    aptos_folder(tmp_path / "aptos")
    damage("none", tmp_path / "aptos", aptos_folder(tmp_path / "unused"))
    with pytest.raises(ConfigError) as info:
        run_prepare(stage_params(tmp_path, model={"num_classes": 3}))
    csv = tmp_path / "aptos" / "train.csv"
    assert str(info.value) == (
        f"model.num_classes: 3 is not allowed; {csv} row 5 has grade 3 (set model.num_classes: 5)"
    )
    assert_nothing_written(tmp_path)


def test_evaluation_grade_above_num_classes_stops_before_any_cache(tmp_path):
    rows = [(i, g % 3) for i, g in aptos_folder(tmp_path / "aptos", n=30)]  # grades 0-2
    damage("none", tmp_path / "aptos", rows)
    ds = messidor_folder(tmp_path / "messidor", ["1"] * 6, [0, 1, 2, 2, 4, 3])
    with pytest.raises(ConfigError) as info:
        run_prepare(stage_params(tmp_path, {"num_classes": 3}, {"datasets": [ds]}))
    assert str(info.value) == (
        f"model.num_classes: 3 is not allowed; {ds['csv']} row 6 has grade 4 "
        "(set model.num_classes: 5)"
    )
    assert_nothing_written(tmp_path)


def test_bad_gradable_flag_stops_before_any_cache_or_is_skipped(tmp_path):
    damage("none", tmp_path / "aptos", aptos_folder(tmp_path / "aptos"))
    ds = messidor_folder(tmp_path / "messidor", ["1", "TRUE", "yes", "?", "0", "1.0"], [0] * 6)
    with pytest.raises(DatasetError, match=r"messidor_data.csv: row 5 \(adjudicated_gradable='\?'"):
        run_prepare(stage_params(tmp_path, evaluate={"datasets": [ds]}))
    assert_nothing_written(tmp_path)
    summary = run_prepare(
        stage_params(tmp_path, evaluate={"datasets": [{**ds, "skip_bad_rows": True}]})
    )
    assert summary["domain_b"]["images"] == 4  # 1, TRUE, yes, 1.0
    assert load_prepared(tmp_path / "prepared" / "domain_b")[1]["id"].tolist() == [
        "IM000000.jpg", "IM000001.jpg", "IM000002.jpg", "IM000005.jpg"
    ]  # fmt: skip


def run_stage_script(tmp_path) -> str:
    """Run stages/prepare_split.py in tmp_path; return its one error line (exit code 2)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages/prepare_split.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    # Exactly one error line, the last; anything above it is the stage's progress log.
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert all(LOG_LINE.match(line) for line in lines[:-1]), proc.stderr
    assert_nothing_written(tmp_path)
    return lines[-1]


def test_stage_script_no_retina_is_one_line(tmp_path):
    rows = aptos_folder(tmp_path / "aptos")
    damage("dark", tmp_path / "aptos", rows)
    stage_params(tmp_path)
    image = tmp_path / "aptos" / "train_images" / f"{rows[9][0]}.png"
    line = run_stage_script(tmp_path)
    csv = tmp_path / "aptos" / "train.csv"
    assert re.fullmatch(  # "of N": the images of the split that holds row 11
        re.escape(f"error: {csv}: 1 unusable image(s) of ")
        + r"\d+"
        + re.escape(
            f": row 11 {image} (no retina found: only 0.0 % of the image is brighter than the "
            "black border, expected at least 5 %) (skip_bad_rows: true skips them)"
        ),
        line,
    ), line


def test_stage_script_bad_gradable_flag_is_one_line(tmp_path):
    damage("none", tmp_path / "aptos", aptos_folder(tmp_path / "aptos"))
    ds = messidor_folder(tmp_path / "messidor", ["1", "1", "maybe", "0"], [0, 1, 2, 3])
    stage_params(tmp_path, evaluate={"datasets": [ds]})
    assert run_stage_script(tmp_path) == (
        f"error: {ds['csv']}: row 4 (adjudicated_gradable='maybe'): must be 1/0, true/false, "
        "yes/no, y/n or t/f (any case); 1 bad row(s) (skip_bad_rows: true skips them)"
    )


def test_stage_script_grade_above_num_classes_is_one_line(tmp_path):
    damage("none", tmp_path / "aptos", aptos_folder(tmp_path / "aptos"))
    stage_params(tmp_path, model={"num_classes": 4})
    assert run_stage_script(tmp_path) == (
        f"error: model.num_classes: 4 is not allowed; {tmp_path / 'aptos' / 'train.csv'} row 6 "
        "has grade 4 (set model.num_classes: 5)"
    )


# Planted duplicates: 25 distinct eyes (grades 0-4) and copies of three of them, one regraded.
PLANTED = {  # copy id: (original index, how it was copied, its grade)
    "c0resized": (0, {"scale": 0.6, "quality": 75}, 0),
    "c1regraded": (1, {"scale": 1.5}, 2),  # the original is grade 1: a conflict
    "c2jpeg": (2, {"quality": 90}, 2),
    "c2small": (2, {"scale": 0.5}, 2),
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """An APTOS folder with planted copies, and a Messidor-2 set holding one copy of eye 5."""
    root = tmp_path_factory.mktemp("planted")
    (root / "aptos" / "train_images").mkdir(parents=True)
    eyes = {f"eye{i:02d}": (eye(i, i % 5), i % 5) for i in range(25)}
    copies = {
        name: (copy_of(eyes[f"eye{i:02d}"][0], **how), g) for name, (i, how, g) in PLANTED.items()
    }
    rows = []
    for name, (image, grade) in {**eyes, **copies}.items():
        Image.fromarray(image).save(
            root / "aptos" / "train_images" / f"{name}.png", compress_level=1
        )
        rows.append(f"{name},{grade}\n")
    (root / "aptos" / "train.csv").write_text("id_code,diagnosis\n" + "".join(rows))
    (root / "messidor" / "IMAGES").mkdir(parents=True)
    external = [copy_of(eyes["eye05"][0], scale=0.8)] + [eye(100 + i) for i in range(3)]
    for i, image in enumerate(external):
        Image.fromarray(image).save(root / "messidor" / "IMAGES" / f"IM{i}.jpg", quality=90)
    (root / "messidor" / "messidor_data.csv").write_text(
        "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
        + "".join(f"IM{i}.jpg,0,0,1\n" for i in range(4))
    )
    return root


def planted_params(tmp_path, planted, **data):
    ds = {
        "name": "domain_b",
        "format": "messidor",
        "csv": str(planted / "messidor" / "messidor_data.csv"),
        "images": str(planted / "messidor" / "IMAGES"),
    }
    return stage_params(
        tmp_path,
        model={"input_size": 96},
        evaluate={"datasets": [ds]},
        val_fraction=0.25,  # 4 patients per grade suffice
        test_fraction=0.25,
        csv=str(planted / "aptos" / "train.csv"),
        images=str(planted / "aptos" / "train_images"),
        **data,
    )


def split_of_each_id(tmp_path) -> dict[str, str]:
    where = {}
    for name in ("train", "val", "test"):
        split = pd.read_csv(tmp_path / "splits" / f"{name}.csv", dtype={"id": str})
        _, index = load_prepared(tmp_path / "prepared" / name)
        assert split["id"].tolist() == index["id"].tolist()
        where.update(dict.fromkeys(split["id"], name))
    return where


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_duplicates_share_a_split_and_are_reported(tmp_path, planted, caplog, seed):
    params = planted_params(tmp_path, planted)
    with caplog.at_level(logging.INFO):
        summary = run_prepare(dataclasses.replace(params, seed=seed))
    where = split_of_each_id(tmp_path)
    assert len(where) == 29
    groups = [["eye00", "c0resized"], ["eye01", "c1regraded"], ["eye02", "c2jpeg", "c2small"]]
    for group in groups:
        assert len({where[i] for i in group}) == 1, group
    # ... and one resampling unit, recorded in the prepared index for the evaluation
    index = pd.concat(load_prepared(tmp_path / "prepared" / s)[1] for s in ("train", "val", "test"))
    unit_of = dict(zip(index["id"], index["unit"], strict=True))
    for group in groups:
        assert len({unit_of[i] for i in group}) == 1, group
    assert index["unit"].nunique() == 29 - 4 and summary["train"]["units"] < 29
    report = summary["duplicates"]
    assert sorted(sorted(g["ids"]) for g in report["group_list"]) == sorted(map(sorted, groups))
    assert (report["groups"], report["images"], report["conflicting_groups"]) == (3, 7, 1)
    assert report["dropped_images"] == 0
    (conflict,) = [g for g in report["group_list"] if g["conflicting"]]
    assert sorted(zip(conflict["ids"], conflict["grades"], strict=True)) == [
        ("c1regraded", 2), ("eye01", 1)
    ]  # fmt: skip
    assert conflict["rows"] == [3, 28]  # eye01 is line 3 of train.csv, c1regraded line 28
    assert conflict["split"] == where["eye01"] and not conflict["dropped"]
    # The evaluation set's copy of eye05 is reported with the split that holds eye05.
    (pair,) = report["cross_dataset"]["domain_b"]["pairs"]
    assert (pair["id"], pair["row"], pair["duplicate_of"]) == ("IM0.jpg", 2, "eye05")
    assert pair["split"] == where["eye05"]
    logged = [r.getMessage() for r in caplog.records]
    assert (
        "duplicates: 3 group(s) of 7 images, 1 with conflicting grades; evaluation images that "
        "duplicate split images: domain_b 1"
    ) in logged
    assert sum(m.startswith("duplicate group ") for m in logged) == 3
    assert any(m.startswith("domain_b: IM0.jpg (row 2, grade 0) duplicates eye05") for m in logged)


def test_drop_conflicting_drops_the_conflicting_group(tmp_path, planted):
    summary = run_prepare(planted_params(tmp_path, planted, duplicates="drop_conflicting"))
    where = split_of_each_id(tmp_path)
    assert len(where) == 27 and "eye01" not in where and "c1regraded" not in where
    assert where["eye02"] == where["c2jpeg"] == where["c2small"]
    report = summary["duplicates"]
    assert (report["groups"], report["dropped_images"]) == (3, 2)
    assert [g["dropped"] for g in report["group_list"]] == [
        g["conflicting"] for g in report["group_list"]
    ]
    assert sum(summary[s]["images"] for s in ("train", "val", "test")) == 27


def test_no_pool_is_left_behind(tmp_path, planted):
    run_prepare(planted_params(tmp_path, planted))
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == [
        "domain_b", "test", "train", "val"
    ]  # fmt: skip


def messidor_exams_folder(root, n_exams=20):
    """Messidor-2 as training data: n exams of two eyes (fellow eyes graded alike or one
    grade apart) and the exam list, `left;right`, as ADCIS ships it."""
    (root / "IMAGES").mkdir(parents=True)
    rows, pairs = [], []
    for e in range(n_exams):
        left, right = f"2005{e:04d}_{2 * e:05d}_0100_PP.png", f"IM{e:06d}.JPG"
        grades = (e % 5, max(0, e % 5 - (e // 5) % 2))
        for i, (name, grade) in enumerate(zip((left, right), grades, strict=True)):
            img = fundus_like(np.random.default_rng(1000 + 2 * e + i), size=24, border=4)
            Image.fromarray(img).save(root / "IMAGES" / name)
            rows.append(f"{name.lower() if i else name},{grade},0,1\n")  # IM...jpg in the CSV
        pairs.append(f"{left};{right}\n")
    header = "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
    (root / "messidor_data.csv").write_text(header + "".join(rows))
    (root / "messidor-2.csv").write_text("left;right\n" + "".join(pairs))
    return root


def test_messidor_exam_list_keeps_both_eyes_in_one_split(tmp_path):
    root = messidor_exams_folder(tmp_path / "messidor")
    params = stage_params(
        tmp_path,
        format="messidor",
        csv=str(root / "messidor_data.csv"),
        images=str(root / "IMAGES"),
        exams=str(root / "messidor-2.csv"),
        val_fraction=0.25,
        test_fraction=0.25,
    )
    summary = run_prepare(params)
    exams = {}
    for name in ("train", "val", "test"):
        index = load_prepared(tmp_path / "prepared" / name)[1]
        assert {"exam", "duplicate_group", "unit"} <= set(index.columns)
        assert (index.groupby("exam")["unit"].nunique() == 1).all()  # one unit per exam
        assert (index.groupby("exam").size() == 2).all()  # both eyes here
        assert summary[name]["exams"] == summary[name]["units"] == len(index) // 2
        exams |= dict.fromkeys(index["exam"], name)
    assert len(exams) == 20  # every exam in exactly one split (keys are unique)
    # without the list the eyes are independent images, and split apart
    (tmp_path / "prepared").rename(tmp_path / "with_exams")
    run_prepare(dataclasses.replace(params, data=dataclasses.replace(params.data, exams=None)))
    split_of = {}
    for name in ("train", "val", "test"):
        index = load_prepared(tmp_path / "prepared" / name)[1]
        assert (index["unit"] == index["patient"]).all() and (index["exam"].isna()).all()
        split_of |= dict.fromkeys(index["id"], name)
    pairs = (root / "messidor-2.csv").read_text().splitlines()[1:]
    apart = [p for p in pairs if split_of[p.split(";")[0]] != split_of[p.split(";")[1].lower()]]
    assert apart  # the exam list is what kept them together


def test_bad_exam_list_stops_the_stage_in_one_line(tmp_path, monkeypatch, capsys):
    from retfound_hpo.core.cli import run_stage
    from retfound_hpo.data.prepare import prepare_split

    root = messidor_exams_folder(tmp_path / "messidor", n_exams=4)
    lines = (root / "messidor-2.csv").read_text().splitlines()
    lines[3] = lines[3].split(";")[0] + ";" + lines[1].split(";")[1]  # an eye in two exams
    (root / "messidor-2.csv").write_text("\n".join(lines) + "\n")
    params = stage_params(
        tmp_path,
        format="messidor",
        csv=str(root / "messidor_data.csv"),
        images=str(root / "IMAGES"),
        exams=str(root / "messidor-2.csv"),
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(lambda: prepare_split(params.data, (), input_size=32, num_classes=5, seed=0))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert err == (
        f"error: {root / 'messidor-2.csv'}: row 4: image 'IM000000.JPG' is already in the exam "
        "of row 2"
    )
    assert_nothing_written(tmp_path)
