"""Data layer: image decoding, competition tables and their errors, transforms, seeded dataset."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from src.core.distributed import EpochSampler
from src.core.tasks.base import sorted_classes
from src.core.utils import UserError
from src.data.folds import load_or_create_folds
from src.data.images import find_bad_images, read_image
from src.data.loaders import ImageDataset
from src.data.tables import drop_bad_images, load_test_table, load_train_table
from src.data.transforms import build_transform, seed_transform
from src.training.trainer import train_fold

# ---------------------------------------------------------------- helpers


def _png(path: Path, value: int = 128, size: tuple[int, int] = (6, 4)) -> Path:
    """A small grayscale PNG (size is width x height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def _csv(path: Path, rows: list[dict] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(rows, str):
        path.write_text(rows)
    else:
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _assert_rgb_uint8(arr: np.ndarray, h: int, w: int) -> None:
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == np.uint8
    assert arr.shape == (h, w, 3)
    assert arr.flags["C_CONTIGUOUS"]


def _user_error(fn, *args) -> str:
    with pytest.raises(UserError) as e:
        fn(*args)
    return str(e.value)


# ---------------------------------------------------------------- read_image


def test_read_rgb_png(tmp_path: Path):
    p = tmp_path / "rgb.png"
    Image.new("RGB", (5, 3), (10, 20, 30)).save(p)
    arr = read_image(p)
    _assert_rgb_uint8(arr, 3, 5)
    assert (arr == [10, 20, 30]).all()


def test_read_grayscale_png(tmp_path: Path):
    arr = read_image(_png(tmp_path / "g.png", 77, (7, 3)))
    _assert_rgb_uint8(arr, 3, 7)
    assert (arr == 77).all()


def test_read_rgba_png(tmp_path: Path):
    p = tmp_path / "rgba.png"
    im = Image.new("RGBA", (4, 6), (200, 100, 50, 255))
    im.putpixel((0, 0), (1, 2, 3, 0))
    im.save(p)
    arr = read_image(p)
    _assert_rgb_uint8(arr, 6, 4)
    assert (arr[1:, :] == [200, 100, 50]).all()


def test_read_la_png(tmp_path: Path):
    p = tmp_path / "la.png"
    Image.new("LA", (3, 2), (90, 128)).save(p)
    arr = read_image(p)
    _assert_rgb_uint8(arr, 2, 3)
    assert (arr == 90).all()


@pytest.mark.parametrize("transparency", [False, True])
def test_read_palette_png(tmp_path: Path, transparency: bool):
    p = tmp_path / "pal.png"
    im = Image.new("P", (5, 4), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    im.putpixel((2, 1), 1)
    if transparency:
        im.info["transparency"] = 0
    im.save(p)
    with Image.open(p) as check:
        assert check.mode == "P"
        assert ("transparency" in check.info) == transparency
    arr = read_image(p)
    _assert_rgb_uint8(arr, 4, 5)
    assert arr[1, 2].tolist() == [0, 255, 0]
    assert arr[0, 0].tolist() == [255, 0, 0]


def test_read_16bit_grayscale_png_scales_to_8_bits(tmp_path: Path):
    p = tmp_path / "g16.png"
    data = np.array([[0, 65535, 257], [32896, 514, 65535]], dtype=np.uint16)
    Image.fromarray(data).save(p)
    with Image.open(p) as check:
        assert check.mode == "I;16"
    arr = read_image(p)
    _assert_rgb_uint8(arr, 2, 3)
    assert arr[..., 0].tolist() == [[0, 255, 1], [128, 2, 255]]
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()


def test_read_float_tiff(tmp_path: Path):
    p = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 2.0]], dtype=np.float32)).save(p)
    arr = read_image(p)
    _assert_rgb_uint8(arr, 2, 2)
    assert arr[..., 0].tolist() == [[0, 64], [128, 255]]


def test_read_cmyk_jpeg(tmp_path: Path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 5), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    with Image.open(p) as check:
        assert check.mode == "CMYK"
    arr = read_image(p)
    _assert_rgb_uint8(arr, 5, 8)
    r, g, b = arr.reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_read_exif_rotated_jpeg(tmp_path: Path):
    # A 20 wide x 10 high JPEG (array shape 10x20) with EXIF orientation 6 (rotate 90 degrees
    # clockwise to display) must come back as it is displayed: 20 high x 10 wide.
    p = tmp_path / "rot.jpg"
    im = Image.new("RGB", (20, 10), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 10, 10))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(p, exif=exif, quality=95)
    with Image.open(p) as check:
        assert check.size == (20, 10) and check.getexif()[0x0112] == 6
    arr = read_image(p)
    _assert_rgb_uint8(arr, 20, 10)
    # a clockwise quarter turn brings the left (red) half to the top
    top, bottom = arr[:8].reshape(-1, 3).mean(0), arr[12:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_read_corrupt_file_names_path(tmp_path: Path):
    p = tmp_path / "broken.png"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    msg = _user_error(read_image, p)
    assert str(p) in msg


def test_read_truncated_png_names_path(tmp_path: Path):
    good = _png(tmp_path / "ok.png", 5, (64, 64))
    p = tmp_path / "trunc.png"
    p.write_bytes(good.read_bytes()[:60])
    assert str(p) in _user_error(read_image, p)


def test_find_bad_images(tmp_path: Path):
    good = _png(tmp_path / "a.png")
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not an image at all")
    assert find_bad_images([str(good), str(bad), str(good)], workers=2) == [str(bad)]


# ---------------------------------------------------------------- training table


def test_ids_with_and_without_extension(tmp_path: Path, demo_cfg):
    d = tmp_path / "comp"
    _png(d / "train" / "a.png")
    _png(d / "train" / "b.jpeg")
    _png(d / "train" / "c.png")
    _csv(d / "train.csv", [{"id": "a.png", "label": 0}, {"id": "b", "label": 1}, {"id": "c", "label": 0}])
    df = load_train_table(demo_cfg(d, tmp_path / "out").data)
    assert df.columns.tolist() == ["id", "label", "path"]
    assert df["id"].tolist() == ["a.png", "b", "c"]
    assert df["label"].tolist() == ["0", "1", "0"]
    assert df["path"].tolist() == [str(d / "train" / n) for n in ("a.png", "b.jpeg", "c.png")]


def test_nested_folders(tmp_path: Path, demo_cfg):
    d = tmp_path / "comp"
    _png(d / "train" / "part1" / "x.png")
    _png(d / "train" / "part2" / "deep" / "y.png")
    _png(d / "train" / "part2" / "z.png")
    _csv(
        d / "train.csv",
        [{"id": "x", "label": "a"}, {"id": "part2/deep/y.png", "label": "b"}, {"id": "part2/z", "label": "a"}],
    )
    df = load_train_table(demo_cfg(d, tmp_path / "out").data)
    assert df["path"].tolist() == [
        str(d / "train" / "part1" / "x.png"),
        str(d / "train" / "part2" / "deep" / "y.png"),
        str(d / "train" / "part2" / "z.png"),
    ]


def test_ambiguous_bare_name_is_not_guessed(tmp_path: Path, demo_cfg):
    d = tmp_path / "comp"
    _png(d / "train" / "f1" / "same.png")
    _png(d / "train" / "f2" / "same.png")
    _csv(d / "train.csv", [{"id": "same", "label": 0}])
    msg = _user_error(load_train_table, demo_cfg(d, tmp_path / "out").data)
    assert "same" in msg
    _csv(d / "train.csv", [{"id": "f2/same", "label": 0}])
    assert load_train_table(demo_cfg(d, tmp_path / "out").data)["path"].tolist() == [str(d / "train" / "f2" / "same.png")]


def test_imagefolder_layout_matches_csv_layout(tmp_path: Path, demo_cfg):
    d = tmp_path / "comp"
    files = {"cat": ["c1", "c2"], "dog": ["d1", "d2", "d3"], "zebra": ["z1"]}
    rows = []
    for label, names in files.items():
        for n in names:
            _png(d / "train" / label / f"{n}.png")
            rows.append({"id": f"{label}/{n}", "label": label})
    _png(d / "train" / "dog" / "sub" / "d4.png")
    rows.append({"id": "dog/sub/d4", "label": "dog"})
    (d / "train" / "cat" / "notes.txt").write_text("not an image")
    _csv(d / "train.csv", rows)
    from_folder = load_train_table(demo_cfg(d, tmp_path / "out", "data.layout=imagefolder").data)
    from_csv = load_train_table(demo_cfg(d, tmp_path / "out").data)
    key = ["id"]
    pd.testing.assert_frame_equal(
        from_folder.sort_values(key).reset_index(drop=True), from_csv.sort_values(key).reset_index(drop=True)
    )
    assert len(from_folder) == 7
    assert sorted(set(from_folder["label"])) == ["cat", "dog", "zebra"]


def test_imagefolder_missing_or_empty(tmp_path: Path, demo_cfg):
    d = tmp_path / "comp"
    d.mkdir()  # the competition folder exists, its train folder does not
    msg = _user_error(load_train_table, demo_cfg(d, tmp_path / "out", "data.layout=imagefolder").data)
    assert str(d / "train") in msg
    (d / "train" / "empty_class").mkdir(parents=True)
    msg = _user_error(load_train_table, demo_cfg(d, tmp_path / "out", "data.layout=imagefolder").data)
    assert "class folders" in msg


def test_filename_layout_reads_labels_from_file_names(tmp_path: Path, demo_cfg, demo_dir: Path, tiny_cfg):
    """Dogs vs Cats: train/cat.0.png and train/dog.1.png, no train.csv. Built from the digits demo
    (the digit is in each file name), its table holds the labels train.csv has, and a fold trains."""
    d = tmp_path / "dogs_vs_cats"
    shutil.copytree(demo_dir, d, ignore=shutil.ignore_patterns("train", "train.csv"))
    truth = pd.read_csv(demo_dir / "train.csv", dtype=str)
    (d / "train").mkdir()
    for i, label in zip(truth["id"], truth["label"]):
        os.link(demo_dir / "train" / f"{i}.png", d / "train" / f"digit{label}.{i}.png")
    pattern = r"data.label_pattern=^digit(\d)\."
    table = load_train_table(demo_cfg(d, tmp_path / "out", "data.layout=filename", pattern).data)
    assert sorted(zip(table["id"], table["label"])) == sorted(zip("digit" + truth["label"] + "." + truth["id"],
                                                                   truth["label"]))
    result = train_fold(tiny_cfg(d, tmp_path / "out", "data.layout=filename", pattern, "data.n_folds=2"), 0)
    assert result["best"] is not None

    (d / "train" / "notes.png").write_bytes((d / "train" / f"digit{truth['label'][0]}.{truth['id'][0]}.png").read_bytes())
    msg = _user_error(load_train_table, demo_cfg(d, tmp_path / "out", "data.layout=filename", pattern).data)
    assert "1 of" in msg and "notes.png" in msg and "data.label_pattern" in msg
    for bad, needle in ((["data.layout=filename"], "needs data.label_pattern"),
                        (["data.layout=filename", "data.label_pattern=^(a)(b)"], "exactly one"),
                        (["data.layout=filename", "data.label_pattern=^(a"], "not a regular expression")):
        with pytest.raises(UserError, match=needle):
            demo_cfg(d, tmp_path / "out", *bad)


def test_imagefolder_with_group_col_is_rejected(tmp_path: Path, demo_cfg):
    d = tmp_path / "comp"
    _png(d / "train" / "a" / "1.png")
    msg = _user_error(load_train_table, demo_cfg(d, tmp_path / "out", "data.layout=imagefolder", "data.group_col=g").data)
    assert "data.group_col" in msg


def test_string_labels_and_class_order(tmp_path: Path, demo_cfg):
    d = tmp_path / "comp"
    rows = []
    for i, label in enumerate(["tulip", "rose", "daisy", "rose", "tulip", "daisy"]):
        _png(d / "train" / f"im{i}.png")
        rows.append({"id": f"im{i}", "label": label})
    _csv(d / "train.csv", rows)
    df = load_train_table(demo_cfg(d, tmp_path / "out").data)
    assert df["label"].tolist() == [r["label"] for r in rows]
    assert sorted_classes(df["label"]) == ["daisy", "rose", "tulip"]
    assert sorted_classes(pd.Series(["10", "9", "2", "1"])) == ["1", "2", "9", "10"]


def test_custom_column_names(tmp_path: Path, demo_cfg):
    d = tmp_path / "comp"
    _png(d / "train" / "q.png")
    _csv(d / "train.csv", [{"image_id": "q", "species": "owl", "extra": 1}])
    df = load_train_table(demo_cfg(d, tmp_path / "out", "data.id_col=image_id", "data.label_col=species").data)
    assert df.to_dict("records") == [{"id": "q", "label": "owl", "path": str(d / "train" / "q.png")}]


def test_test_table_follows_sample_submission_order(tmp_path: Path, demo_cfg):
    d = tmp_path / "comp"
    for n in ("t3", "t1", "t2"):
        _png(d / "test" / f"{n}.png")
    _csv(d / "sample_submission.csv", [{"id": n, "label": 0} for n in ("t3", "t1", "t2")])
    test, sample = load_test_table(demo_cfg(d, tmp_path / "out").data)
    assert test["id"].tolist() == ["t3", "t1", "t2"]
    assert test["path"].tolist() == [str(d / "test" / f"{n}.png") for n in ("t3", "t1", "t2")]
    assert sample.columns.tolist() == ["id", "label"]


# ---------------------------------------------------------------- table errors (nothing written)


@pytest.fixture
def comp(tmp_path: Path) -> Path:
    """A valid 12-image csv competition: 6 per class."""
    d = tmp_path / "comp"
    rows = []
    for i in range(12):
        _png(d / "train" / f"im{i:02d}.png", value=i * 10)
        rows.append({"id": f"im{i:02d}", "label": i % 2})
    _csv(d / "train.csv", rows)
    return d


def _fails_writing_nothing(cfg) -> str:
    out = Path(cfg.experiment.output_dir)
    with pytest.raises(UserError) as e:
        load_or_create_folds(cfg)
    assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))
    return str(e.value)


def test_valid_fixture_splits(comp: Path, tmp_path: Path, demo_cfg):
    # guards the error tests below: the fixture itself is fine
    df, classes, path = load_or_create_folds(demo_cfg(comp, tmp_path / "out", "data.n_folds=3"))
    assert len(df) == 12 and classes == ["0", "1"] and path.is_file()


def test_missing_train_csv(comp: Path, tmp_path: Path, demo_cfg):
    (comp / "train.csv").unlink()
    msg = _fails_writing_nothing(demo_cfg(comp, tmp_path / "out"))
    assert str(comp / "train.csv") in msg and "does not exist" in msg


def test_missing_image_folder(comp: Path, tmp_path: Path, demo_cfg):
    msg = _fails_writing_nothing(demo_cfg(comp, tmp_path / "out", "data.image_dir=images"))
    assert str(comp / "images") in msg and "data.image_dir" in msg


@pytest.mark.parametrize(
    ("key", "value"), [("data.id_col", "image_id"), ("data.label_col", "target"), ("data.group_col", "patient")]
)
def test_missing_column_names_column_and_key(comp: Path, tmp_path: Path, key: str, value: str, demo_cfg):
    msg = _fails_writing_nothing(demo_cfg(comp, tmp_path / "out", f"{key}={value}"))
    assert f"'{value}'" in msg and key in msg and str(comp / "train.csv") in msg


def test_ids_without_image_are_listed_at_most_ten(comp: Path, tmp_path: Path, demo_cfg):
    rows = pd.read_csv(comp / "train.csv", dtype=str).to_dict("records")
    ghosts = [f"ghost{i:02d}" for i in range(13)]
    rows += [{"id": g, "label": "0"} for g in ghosts]
    _csv(comp / "train.csv", rows)
    msg = _fails_writing_nothing(demo_cfg(comp, tmp_path / "out"))
    assert "13" in msg
    for g in ghosts[:10]:
        assert g in msg
    for g in ghosts[10:]:
        assert g not in msg
    assert "3 more" in msg
    assert "im00" not in msg


def test_one_id_without_image(comp: Path, tmp_path: Path, demo_cfg):
    (comp / "train" / "im05.png").unlink()
    msg = _fails_writing_nothing(demo_cfg(comp, tmp_path / "out"))
    assert "im05" in msg and "more" not in msg


def test_empty_csv(comp: Path, tmp_path: Path, demo_cfg):
    (comp / "train.csv").write_bytes(b"")
    msg = _fails_writing_nothing(demo_cfg(comp, tmp_path / "out"))
    assert str(comp / "train.csv") in msg and "empty" in msg


def test_header_only_csv(comp: Path, tmp_path: Path, demo_cfg):
    (comp / "train.csv").write_text("id,label\n")
    msg = _fails_writing_nothing(demo_cfg(comp, tmp_path / "out"))
    assert str(comp / "train.csv") in msg and "no rows" in msg


def test_rows_without_label(comp: Path, tmp_path: Path, demo_cfg):
    text = (comp / "train.csv").read_text().replace("im03,1", "im03,")
    (comp / "train.csv").write_text(text)
    msg = _fails_writing_nothing(demo_cfg(comp, tmp_path / "out"))
    assert "without a label" in msg and "row 5" in msg


def test_duplicate_ids(comp: Path, tmp_path: Path, demo_cfg):
    with open(comp / "train.csv", "a") as f:
        f.write("im04,1\n")
    msg = _fails_writing_nothing(demo_cfg(comp, tmp_path / "out"))
    assert "im04" in msg and "twice" in msg


# ---------------------------------------------------------------- bad images


def _corrupt(comp: Path, name: str) -> Path:
    p = comp / "train" / name
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    return p


def test_bad_images_error(comp: Path, tmp_path: Path, demo_cfg):
    bad = _corrupt(comp, "im07.png")
    cfg = demo_cfg(comp, tmp_path / "out", "data.bad_images=error")
    df = load_train_table(cfg.data)
    msg = _user_error(drop_bad_images, df, cfg)
    assert str(bad) in msg and "data.bad_images=skip" in msg


def test_bad_images_skip_drops_with_warning(comp: Path, tmp_path: Path, demo_cfg):
    bad = [_corrupt(comp, "im07.png"), _corrupt(comp, "im02.png")]
    cfg = demo_cfg(comp, tmp_path / "out", "data.bad_images=skip")
    df = load_train_table(cfg.data)
    with pytest.warns(UserWarning, match="skipping 2 unreadable images") as rec:
        kept = drop_bad_images(df, cfg)
    assert all(str(b) in str(rec[0].message) for b in bad)
    assert len(kept) == 10
    assert set(df["id"]) - set(kept["id"]) == {"im07", "im02"}
    assert kept.index.tolist() == list(range(10))


def test_good_images_pass_untouched(comp: Path, tmp_path: Path, demo_cfg):
    cfg = demo_cfg(comp, tmp_path / "out", "data.bad_images=error")
    df = load_train_table(cfg.data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = drop_bad_images(df, cfg)
    pd.testing.assert_frame_equal(out, df)


def test_check_images_false_skips_the_check(comp: Path, tmp_path: Path, demo_cfg):
    _corrupt(comp, "im07.png")
    cfg = demo_cfg(comp, tmp_path / "out", "data.check_images=false")
    df = load_train_table(cfg.data)
    assert len(drop_bad_images(df, cfg)) == 12


# ---------------------------------------------------------------- transforms and the seeded dataset


def _noise(path: Path, h: int, w: int, seed: int = 0) -> Path:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(20, 45), (50, 17)])
@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
def test_transform_output_shape_and_dtype(
    train: bool, shape: tuple[int, int], crop_pct: float, tmp_path: Path, demo_cfg
):
    cfg = demo_cfg(tmp_path, tmp_path / "out", f"aug.crop_pct={crop_pct}", "aug.hflip=true", "aug.vflip=true")
    t = build_transform(cfg.aug, train, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    x = t(image=img)["image"]
    assert isinstance(x, torch.Tensor)
    assert x.dtype == torch.float32
    assert tuple(x.shape) == (3, 32, 32)
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6


def test_eval_transform_is_deterministic_resize_and_normalize(tmp_path: Path, demo_cfg):
    cfg = demo_cfg(tmp_path, tmp_path / "out")
    t = build_transform(cfg.aug, False, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img = np.full((32, 32, 3), 255, dtype=np.uint8)
    x = t(image=img)["image"]
    assert torch.allclose(x, torch.ones(3, 32, 32))


@pytest.fixture
def noise_ds(tmp_path: Path, demo_cfg) -> ImageDataset:
    cfg = demo_cfg(tmp_path, tmp_path / "out", "aug.hflip=true", "aug.vflip=true")
    paths = [str(_noise(tmp_path / f"n{i}.png", 24, 40, seed=i)) for i in range(4)]
    return ImageDataset(paths, [0, 1, 2, 3], build_transform(cfg.aug, True, (0.5,) * 3, (0.5,) * 3))


def test_dataset_same_key_same_tensor(noise_ds: ImageDataset):
    a, ya = noise_ds[(2, 12345)]
    noise_ds[(1, 999)]  # something else in between must not matter
    b, yb = noise_ds[(2, 12345)]
    assert ya == yb == 2
    assert torch.equal(a, b)


def test_dataset_fresh_instance_same_key_same_tensor(noise_ds: ImageDataset, tmp_path: Path, demo_cfg):
    cfg = demo_cfg(tmp_path, tmp_path / "out", "aug.hflip=true", "aug.vflip=true")
    other = ImageDataset(noise_ds.paths, None, build_transform(cfg.aug, True, (0.5,) * 3, (0.5,) * 3))
    a, _ = noise_ds[(0, 7)]
    b, idx = other[(0, 7)]
    assert idx == 0
    assert torch.equal(a, b)


def test_dataset_different_seeds_different_tensors(noise_ds: ImageDataset):
    outs = [noise_ds[(0, s)][0] for s in (1, 2, 3, 4)]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.equal(outs[i], outs[j]), (i, j)


def test_dataset_without_transform_returns_raw_image(noise_ds: ImageDataset):
    raw = ImageDataset(noise_ds.paths, None, None)
    x, idx = raw[3]
    assert idx == 3 and x.dtype == torch.uint8 and tuple(x.shape) == (24, 40, 3)


def test_epoch_sampler_order():
    a = list(EpochSampler(50, seed=3))
    b = list(EpochSampler(50, seed=3))
    assert a == b
    assert len(a) == 50 and sorted(i for i, _ in a) == list(range(50))
    s = EpochSampler(50, seed=3)
    s.set_epoch(1)
    c = list(s)
    assert [i for i, _ in c] != [i for i, _ in a]
    assert [x for _, x in c] != [x for _, x in a]
    s.set_epoch(0)
    assert list(s) == a  # a pure function of (seed, epoch)
    assert list(EpochSampler(50, seed=4)) != a
    assert [i for i, _ in EpochSampler(50, seed=3, shuffle=False)] == list(range(50))


def _flip_decisions(out: torch.Tensor, img: np.ndarray) -> tuple[int, int]:
    o = out.permute(1, 2, 0).numpy()
    for h in (0, 1):
        for v in (0, 1):
            e = img.astype(np.float32) / 255.0
            if h:
                e = e[:, ::-1]
            if v:
                e = e[::-1]
            if np.allclose(o, e, atol=1e-4):
                return h, v
    raise AssertionError("output is not a flip of the input")


def test_hflip_and_vflip_are_independent_after_seed_transform(tmp_path: Path, demo_cfg):
    # Regression test: albumentations 2.0.8's Compose.set_random_seed gives every child the
    # same seed, so HorizontalFlip and VerticalFlip (both p=0.5) always agree. seed_transform
    # must give each child its own stream.
    cfg = demo_cfg(tmp_path, tmp_path / "out", "aug.hflip=true", "aug.vflip=true", "aug.affine_p=0")
    t = build_transform(cfg.aug, True, (0.0,) * 3, (1.0,) * 3)
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    decisions = []
    for s in range(60):
        seed_transform(t, s)
        decisions.append(_flip_decisions(t(image=img)["image"], img))
    h = np.array([d[0] for d in decisions])
    v = np.array([d[1] for d in decisions])
    assert 0 < h.sum() < len(h) and 0 < v.sum() < len(v)  # both flips happen, not always
    assert (h != v).any(), "hflip and vflip decisions are perfectly correlated"
    assert len(set(decisions)) == 4


def test_hflip_and_vflip_are_independent_through_dataset(tmp_path: Path, demo_cfg):
    cfg = demo_cfg(tmp_path, tmp_path / "out", "aug.hflip=true", "aug.vflip=true", "aug.affine_p=0")
    p = _noise(tmp_path / "sq.png", 32, 32)
    img = read_image(p)
    ds = ImageDataset([str(p)], [0], build_transform(cfg.aug, True, (0.0,) * 3, (1.0,) * 3))
    seeds = [s for _, s in EpochSampler(1, seed=0)] + [s for e in range(1, 40) for s in _epoch_seeds(e)]
    decisions = {_flip_decisions(ds[(0, s)][0], img) for s in seeds}
    assert decisions == {(0, 0), (0, 1), (1, 0), (1, 1)}


def _epoch_seeds(epoch: int) -> list[int]:
    s = EpochSampler(1, seed=0)
    s.set_epoch(epoch)
    return [x for _, x in s]


def _checked_copy(demo_cfg, demo_dir: Path, tmp_path: Path):
    """A private copy of the demo, its config and table, checked once into a cache file."""
    import shutil

    data = tmp_path / "d"
    shutil.copytree(demo_dir, data)
    cfg = demo_cfg(data, tmp_path / "out")
    table = load_train_table(cfg.data)
    cache = tmp_path / "checked.json"
    assert len(drop_bad_images(table, cfg, cache)) == len(table)
    assert cache.is_file()
    return cfg, table, cache


def test_image_check_is_cached_until_a_file_changes(demo_cfg, demo_dir: Path, tmp_path: Path):
    cfg, table, cache = _checked_copy(demo_cfg, demo_dir, tmp_path)
    # A corrupted file changes size and mtime: the cached "all good" no longer applies.
    bad = Path(table["path"][0])
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match=bad.name):
        drop_bad_images(table, cfg, cache)


def test_cached_image_check_skips_decoding_unchanged_files(demo_cfg, demo_dir: Path, tmp_path: Path):
    import os

    cfg, table, cache = _checked_copy(demo_cfg, demo_dir, tmp_path)
    # Same size and mtime: the cache vouches for the file without decoding it again.
    victim = Path(table["path"][1])
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert len(drop_bad_images(table, cfg, cache)) == len(table)
    cache.unlink()
    with pytest.raises(UserError, match=victim.name):
        drop_bad_images(table, cfg, cache)


def test_image_exts_order_decides_between_same_named_files(tmp_path: Path):
    from src.data.tables import ImageIndex

    for name in ("a.png", "a.jpg", "x/b.png", "y/b.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    assert ImageIndex(tmp_path, [".png", ".jpg"]).find("a").name == "a.png"
    assert ImageIndex(tmp_path, [".jpg", ".png"]).find("a").name == "a.jpg"
    assert ImageIndex(tmp_path, [".png"]).find("b") is None  # same rank in two folders: ambiguous
    assert ImageIndex(tmp_path, [".png"]).find("x/b").parent.name == "x"


@pytest.mark.parametrize("labels, tags", [
    (["clear primary", "clear primary water", "haze primary", "cloudy", "clear primary road", "partly_cloudy primary"],
     True),  # Planet
    (["13 405 896", "13 405", "51 896 1092", "13", "405 896"], True),  # iMet attribute ids
    (["Common wheat", "Fat Hen", "Loose Silky-bent", "Common Chickweed", "Black-grass", "Sugar beet"], False),
    (["cat", "dog", "dog", "cat"], False),
    (["0", "1", "2", "3"], False),
])
def test_tag_lists_are_told_from_class_names_with_spaces(labels, tags):
    from src.data.tables import looks_like_tag_lists

    assert looks_like_tag_lists(pd.Series(labels * 3)) is tags
