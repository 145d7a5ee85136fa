import numpy as np
import pandas as pd
from PIL import Image

from conftest import fundus_like
from retfound_hpo.data.preprocess import crop_to_disc, load_prepared, prepare_images


def test_crop_removes_black_border_and_squares():
    img = Image.fromarray(fundus_like(np.random.default_rng(0), size=64, border=20))  # 64 x 104
    out = crop_to_disc(img)
    assert out.size[0] == out.size[1]
    assert 58 <= out.size[0] <= 64  # the disc's diameter


def test_clipped_disc_is_padded_not_stretched():
    full = fundus_like(np.random.default_rng(0), size=80, border=0)
    clipped = Image.fromarray(full[10:70])  # top and bottom of the disc cut off: 60 x 80
    out = crop_to_disc(clipped)
    assert out.size[0] == out.size[1] >= 76  # disc width, not 60
    assert np.asarray(out)[:5].max() == 0  # padding rows are black


def test_prepare_images_writes_whole_cache(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, mode in enumerate(["RGB", "L", "RGBA", "P"]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(fundus_like(rng)).convert(mode).save(path)
        paths.append(str(path))
    table = pd.DataFrame(
        {"id": list("abcd"), "path": paths, "grade": [0, 1, 2, 3], "patient": list("abcd")}
    )
    out = prepare_images(table, tmp_path / "prepared", size=32, workers=1)
    images, index = load_prepared(out)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert index["grade"].tolist() == [0, 1, 2, 3]
    assert not (tmp_path / "prepared.tmp").exists()
    again = prepare_images(table, tmp_path / "prepared", size=32, workers=2)  # parallel == serial
    assert np.array_equal(load_prepared(again)[0], images)
