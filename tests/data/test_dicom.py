"""DICOM input (src/data/dicom.py): files written here by pydicom, decoded and checked against the
display pipeline computed with numpy; pydicom's own sample files; the refusals; the image cache's
key; and a SIIM-ISIC-shaped competition of DICOMs trained and ensembled to a submission."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import REPO, TINY
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from src.core.config import load_config
from src.core.utils import MissingDecoder, UserError
from src.data.image_cache import ImageCache
from src.data.images import find_bad_images, read_image

RNG = np.random.default_rng(0)
STORED = RNG.integers(0, 4096, size=(24, 20)).astype(np.uint16)  # 12-bit values in 16-bit words
MPEG2 = UID("1.2.840.10008.1.2.4.100")  # a transfer syntax pydicom has no decoder for


def write_dicom(path: Path, stored: np.ndarray = STORED, pi: str = "MONOCHROME2", syntax=None, **attrs) -> Path:
    """A 16-bit single-frame DICOM (Secondary Capture) of `stored`, with `attrs` as its elements,
    compressed to `syntax` when given."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, pi
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    if syntax is not None:
        ds.compress(syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR, onto 0..255, written out piecewise as the standard gives it."""
    x = x.astype(np.float64)
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, y)
    return np.where(x > c - 0.5 + (w - 1) / 2, 255.0, y)


def u8(y: np.ndarray) -> np.ndarray:
    return np.clip(y, 0, 255).round().astype(np.uint8)


def grey(img: np.ndarray) -> np.ndarray:
    """The one channel of a grey RGB image (all three must be equal)."""
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    return img[..., 0]


# ---------------------------------------------------------------- the display pipeline


def test_a_16_bit_monochrome2_with_a_window_is_windowed_linearly(tmp_path):
    img = read_image(write_dicom(tmp_path / "a.dcm", WindowCenter=1500, WindowWidth=1000))
    assert img.shape == (24, 20, 3)
    np.testing.assert_array_equal(grey(img), u8(linear(STORED, 1500, 1000)))
    assert 0 < (grey(img) == 0).sum() < STORED.size and (grey(img) == 255).any()  # the window clips both ends


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    m2 = grey(read_image(write_dicom(tmp_path / "m2.dcm", WindowCenter=1500, WindowWidth=1000)))
    m1 = grey(read_image(write_dicom(tmp_path / "m1.dcm", pi="MONOCHROME1", WindowCenter=1500, WindowWidth=1000)))
    np.testing.assert_array_equal(m1, u8(255.0 - linear(STORED, 1500, 1000)))
    np.testing.assert_array_equal(m1.astype(int), 255 - m2.astype(int))
    flat = grey(read_image(write_dicom(tmp_path / "m1_minmax.dcm", pi="MONOCHROME1")))
    assert flat[STORED == STORED.max()].max() == 0 and flat[STORED == STORED.min()].min() == 255  # brightest is black


def test_rescale_slope_and_intercept_come_before_the_window(tmp_path):
    """A CT: stored 0..4095 with slope 2 and intercept -1024 in Hounsfield units, a lung-ish window in HU."""
    path = write_dicom(tmp_path / "ct.dcm", RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=-200, WindowWidth=1500)
    hu = STORED.astype(np.float64) * 2 - 1024
    np.testing.assert_array_equal(grey(read_image(path)), u8(linear(hu, -200, 1500)))
    assert not np.array_equal(grey(read_image(path)), u8(linear(STORED, -200, 1500)))  # the window is in HU


@pytest.mark.parametrize("function", ["SIGMOID", "LINEAR_EXACT"])
def test_the_other_voi_lut_functions(tmp_path, function):
    c, w = 2000.0, 800.0
    img = grey(read_image(write_dicom(tmp_path / "f.dcm", WindowCenter=c, WindowWidth=w, VOILUTFunction=function)))
    x = STORED.astype(np.float64)
    want = (255.0 / (1 + np.exp(-4 * (x - c) / w)) if function == "SIGMOID"
            else np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 255.0, ((x - c) / w + 0.5) * 255.0)))
    np.testing.assert_array_equal(img, u8(want))


def test_the_first_of_several_windows_is_used(tmp_path):
    img = read_image(write_dicom(tmp_path / "two.dcm", WindowCenter=[1500, 40], WindowWidth=[1000, 400]))
    np.testing.assert_array_equal(grey(img), u8(linear(STORED, 1500, 1000)))


def test_a_voi_lut_sequence_maps_each_value(tmp_path):
    lut = ((np.arange(4096) ** 2) // 4096).astype(np.uint16)  # a 12-bit gamma-like curve, not a window
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new(0x00283006, "US", lut.tolist())
    path = write_dicom(tmp_path / "lut.dcm", VOILUTSequence=[item], WindowCenter=1500, WindowWidth=1000)
    # the LUT wins over the window the same file holds (pydicom's prefer_lut)
    np.testing.assert_array_equal(grey(read_image(path)), u8(lut[STORED] * 255.0 / 4095))


def test_without_a_window_min_max_spans_0_to_255(tmp_path):
    img = grey(read_image(write_dicom(tmp_path / "raw.dcm")))
    x = STORED.astype(np.float64)
    np.testing.assert_array_equal(img, u8((x - x.min()) / (x.max() - x.min()) * 255.0))


def test_the_config_window_overrides_the_files(tmp_path):
    path = write_dicom(tmp_path / "w.dcm", WindowCenter=1500, WindowWidth=1000)
    np.testing.assert_array_equal(grey(read_image(path, (3000.0, 2000.0))), u8(linear(STORED, 3000, 2000)))
    assert not np.array_equal(read_image(path, (3000.0, 2000.0)), read_image(path))


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_pixel_data_decodes_to_the_uncompressed_image(tmp_path, syntax):
    big = RNG.integers(0, 4096, size=(64, 48)).astype(np.uint16)  # JPEG 2000's resolution levels need 32 px or more
    plain = write_dicom(tmp_path / "plain.dcm", big, WindowCenter=1500, WindowWidth=1000)
    packed = write_dicom(tmp_path / "packed.dcm", big, syntax=syntax, WindowCenter=1500, WindowWidth=1000)
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_image(packed), read_image(plain))


def _sample(name: str) -> Path:
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(name, download=False)
    except (OSError, ValueError, RuntimeError) as e:
        pytest.skip(f"pydicom's sample {name} is not installed here ({e})")
    if path is None:
        pytest.skip(f"pydicom's sample {name} is not installed here (pydicom-data downloads it)")
    return Path(path)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"])
def test_pydicoms_sample_files(name):
    """Real scanners' files: the modality LUT, then the file's window (CT_small's) or min-max."""
    path = _sample(name)
    ds = pydicom.dcmread(path)
    x = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if "WindowCenter" in ds:
        want = u8(linear(x, float(ds.WindowCenter), float(ds.WindowWidth)))
    else:
        want = u8((x - x.min()) / (x.max() - x.min()) * 255.0)
    img = read_image(path)
    assert img.shape == (ds.Rows, ds.Columns, 3)
    np.testing.assert_array_equal(grey(img), want)


def test_mr_small_rle_reads_as_mr_small():
    np.testing.assert_array_equal(read_image(_sample("MR_small_RLE.dcm")), read_image(_sample("MR_small.dcm")))


# ---------------------------------------------------------------- refusals


def _refusal(fn, *args) -> str:
    with pytest.raises(UserError) as e:
        fn(*args)
    return str(e.value)


def test_a_file_that_is_not_dicom(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"\x89PNG not really" * 20)
    msg = _refusal(read_image, tmp_path / "x.dcm")
    assert str(tmp_path / "x.dcm") in msg and "not a DICOM file" in msg and "replace or remove" in msg


def test_a_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "sr.dcm")
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    msg = _refusal(read_image, path)
    assert str(path) in msg and "no pixel data" in msg and "remove it" in msg


def test_damaged_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "cut.dcm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])  # a download cut short inside the pixel data
    msg = _refusal(read_image, path)
    assert str(path) in msg and "DICOM pixel data cannot be decoded" in msg and "replace or remove" in msg


def test_a_transfer_syntax_nothing_decodes_stops_the_check_instead_of_dropping_images(tmp_path):
    path = write_dicom(tmp_path / "mpeg.dcm")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = MPEG2
    ds.PixelData = pydicom.encaps.encapsulate([b"\0" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(MissingDecoder) as e:
        read_image(path)
    assert str(path) in str(e.value) and "MPEG2" in str(e.value) and "convert" in str(e.value)
    good = write_dicom(tmp_path / "good.dcm")
    with pytest.raises(MissingDecoder):  # not one "bad image" among good ones: the environment is to blame
        find_bad_images([str(good), str(path)], workers=2)
    with pytest.raises(MissingDecoder):
        ImageCache(tmp_path / "cache", 16).fill([str(good), str(path)], workers=2, keep_if_bad=True)
    assert not (tmp_path / "cache").exists()  # the failed fill left nothing behind


def test_corrupt_dicoms_are_bad_images(tmp_path):
    good = write_dicom(tmp_path / "good.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"junk")
    assert find_bad_images([str(good), str(tmp_path / "junk.dcm")], workers=2) == [str(tmp_path / "junk.dcm")]


def test_a_missing_plugin_names_what_to_install(tmp_path):
    """JPEG-LS with pylibjpeg hidden (a fresh interpreter where `import pylibjpeg` fails, as on a
    machine without it): the sentence names the file and the packages that would decode it."""
    path = _sample("JPEGLSNearLossless_16.dcm")
    code = ("import sys; sys.modules['pylibjpeg'] = None\n"
            "from src.data.images import read_image\n"
            f"try:\n    read_image({str(path)!r})\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120).stdout
    assert out.startswith("MissingDecoder") and str(path) in out and "JPEG-LS" in out and "pylibjpeg-libjpeg" in out, out


def test_the_window_width_must_be_at_least_one():
    with pytest.raises(UserError) as e:
        load_config(REPO / "configs" / "demo.yaml", ["data.dicom_window=[40, 0]"])
    assert "data.dicom_window=[40.0, 0.0] has a width below 1" in str(e.value)


# ---------------------------------------------------------------- the image cache


def test_the_cache_keys_dicoms_on_the_window(tmp_path):
    path = str(write_dicom(tmp_path / "w.dcm", WindowCenter=1500, WindowWidth=1000))
    own, wide = ImageCache(tmp_path / "c", 16), ImageCache(tmp_path / "c", 16, (3000, 2000))
    assert own.entry(path) != wide.entry(path)
    assert not np.array_equal(own.load(path), wide.load(path))
    np.testing.assert_array_equal(wide.read(path), ImageCache(tmp_path / "fresh", 16, (3000, 2000)).load(path))
    # without a window the keys stay those of before, so the caches of PNG competitions stay valid
    import hashlib

    from src.data.image_cache import CACHE_VERSION
    from src.data.images import content_sha1

    old = hashlib.sha1(f"{CACHE_VERSION}\0{content_sha1(path)}\0{16}".encode()).hexdigest()
    assert own.entry(path).stem == old


# ---------------------------------------------------------------- a competition of DICOMs


def build_siim_isic(root: Path, n_train: int = 40, n_test: int = 12) -> Path:
    """SIIM-ISIC Melanoma's layout at tiny scale (mle-bench's prepare.py): train.csv with
    image_name, patient_id, ..., target; train/ISIC_<7 digits>.dcm and test/ISIC_<7 digits>.dcm;
    sample_submission.csv image_name,target. The images are sklearn's 0 and 1 digits at 32x32, as
    16-bit CT-like DICOMs (stored 0..4095, slope 2, intercept -1024, a window), the target 1 for a
    one; a third of them MONOCHROME1, so only an inverting reader sees them all the same way."""
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.flatnonzero(digits.target <= 1)[: n_train + n_test]
    rows = []
    for n, i in enumerate(keep):
        name, split = f"ISIC_{1000000 + 37 * n:07d}", "train" if n < n_train else "test"
        ink = cv2.resize(digits.images[i] / 16.0, (32, 32), interpolation=cv2.INTER_LINEAR)
        mono1 = n % 3 == 0
        stored = np.round((1 - ink if mono1 else ink) * 3000 + 500).astype(np.uint16)
        write_dicom(root / split / f"{name}.dcm", stored, pi="MONOCHROME1" if mono1 else "MONOCHROME2",
                    RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=1976, WindowWidth=6000)
        rows.append({"image_name": name, "patient_id": f"IP_{n // 2:07d}", "sex": "male", "age_approx": 45,
                     "anatom_site_general_challenge": "torso", "diagnosis": "unknown",
                     "benign_malignant": "malignant" if digits.target[i] else "benign",
                     "target": int(digits.target[i]), "split": split})
    table = pd.DataFrame(rows)
    train, test = table[table.split == "train"].drop(columns="split"), table[table.split == "test"]
    train.to_csv(root / "train.csv", index=False)
    pd.DataFrame({"image_name": test["image_name"], "target": 0}).to_csv(root / "sample_submission.csv", index=False)
    test[["image_name", "target"]].to_csv(root / "solution.csv", index=False)
    return root


SIIM = ("data.id_col=image_name", "data.label_col=target", "data.task=binary", "metric.name=roc_auc",
        "data.group_col=patient_id", "data.n_folds=2", "data.check_images=true")


def test_a_siim_isic_competition_of_dicoms_trains_and_submits(tmp_path, monkeypatch):
    import src.ensemble as ensemble
    import src.folds as folds
    import src.train as train
    from src.core.cli import run_cli
    from src.data.tables import load_train_table

    comp = build_siim_isic(tmp_path / "inputs" / "siim-isic-melanoma-classification")
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(REPO / "configs" / "demo.yaml"), *TINY, *SIIM, f"data.dir={comp}",
            "experiment.output_dir=outputs", "experiment.name=siim", "wandb.mode=disabled"]
    cfg = load_config(REPO / "configs" / "demo.yaml", args[2:])
    table = load_train_table(cfg.data)
    assert len(table) == 40 and all(p.endswith(".dcm") for p in table["path"])  # found through the default image_exts
    run_cli(folds.main, args)
    run_cli(train.main, [*args, "--fold", "0"])
    assert (tmp_path / "outputs" / "siim" / "fold0" / "done.json").is_file()
    assert any((tmp_path / "outputs" / "cache").rglob("*.npy"))  # decoded once, into the image cache
    run_cli(ensemble.main, [*args, "ensemble.missing_folds=warn", "--tta", "identity", "--out", "submissions/siim.csv"])
    sub = pd.read_csv(tmp_path / "submissions" / "siim.csv")
    sample = pd.read_csv(comp / "sample_submission.csv")
    assert list(sub.columns) == ["image_name", "target"] and sub["image_name"].tolist() == sample["image_name"].tolist()
    assert sub["target"].between(0, 1).all() and sub["target"].nunique() > 1  # a probability per image
