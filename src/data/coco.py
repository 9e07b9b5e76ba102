"""COCO-style annotation files (data.layout=coco): iNaturalist's train2019.json / test2019.json,
Herbarium's train/metadata.json, each holding

    images       [{"id": ..., "file_name": "train_val2019/Plants/400/d13.jpg", ...}, ...]
    annotations  [{"image_id": ..., "category_id": ...}, ...]           (training files only)
    categories   [{"id": ..., "name": ...}, ...]                        (training files only)

joined into the training table (id = the image id, label = the category id, as the submission
writes it back, path = file_name relative to the JSON's folder). The test images come from the
test JSON (data.test_annotations) by the sample submission's ids, or, without one, from data.test_dir.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pandas as pd

from src.core.tasks import join_tags
from src.core.utils import UserError, counted


def read_annotations(path: Path, needs: tuple[str, ...]) -> dict:
    """The JSON object of an annotation file, with the lists it `needs`; read as UTF-8 or, as
    Herbarium 2020's metadata.json is written, Latin-1."""
    if not path.is_file():
        raise UserError(f"annotation file {path} does not exist; copy the competition's JSON there or set "
                        "data.annotations / data.test_annotations (relative to data.dir)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"annotation file {path} is not valid JSON ({e.msg} at line {e.lineno}); download it "
                        "again") from None
    if not isinstance(doc, dict):
        raise UserError(f"annotation file {path} holds a {type(doc).__name__}, not the COCO object with "
                        f"{', '.join(needs)}; check data.annotations")
    lacking = [k for k in needs if not isinstance(doc.get(k), list)]
    if lacking:
        raise UserError(f"annotation file {path} has no {' or '.join(lacking)} list (its keys are {sorted(doc)}); "
                        "a COCO-style file lists images, annotations and categories")
    return doc


def _files(doc: dict, path: Path) -> dict[str, Path]:
    """Image id (as text) -> its file, file_name taken relative to the JSON's folder."""
    out = {}
    for i, image in enumerate(doc["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise UserError(f"annotation file {path}: images[{i}] lacks an id or a file_name; fix the file")
        out[str(image["id"])] = path.parent / str(image["file_name"])
    return out


def _require_files(files: dict[str, Path], path: Path) -> None:
    missing = [f for f in files.values() if not f.is_file()]
    if missing:
        raise UserError(f"{counted(len(missing), 'image')} that {path} lists {'is' if len(missing) == 1 else 'are'} "
                        f"not on disk (e.g. {missing[0]}); file_name is read relative to {path.parent}: copy the "
                        "images there")


def _categories(doc: dict, path: Path) -> dict[str, set[str]]:
    """Image id -> the category ids of its annotations (as text)."""
    known = {str(c.get("id")) for c in doc["categories"] if isinstance(c, dict)}
    if not known:
        raise UserError(f"annotation file {path} lists no categories; a training file names each category_id it uses")
    cats: dict[str, set[str]] = defaultdict(set)
    unknown = set()
    for a in doc["annotations"]:
        image, cat = str(a.get("image_id")), str(a.get("category_id"))
        if cat not in known:
            unknown.add(cat)
        cats[image].add(cat)
    if unknown:
        raise UserError(f"annotation file {path}: annotations use category ids {sorted(unknown)[:5]} that its "
                        "categories do not list; fix the file")
    return cats


def _one_category(cats: dict[str, set[str]], path: Path) -> dict[str, str]:
    several = [i for i, c in cats.items() if len(c) > 1]
    if several:
        raise UserError(f"annotation file {path} gives {counted(len(several), 'image')} several categories (e.g. image "
                        f"{several[0]}: {sorted(cats[several[0]])}); set data.task=multilabel to learn them all")
    return {i: next(iter(c)) for i, c in cats.items()}


def _category_tags(cats: dict[str, set[str]], path: Path) -> dict[str, str]:
    return {i: join_tags(sorted(c)) for i, c in cats.items()}


# Task.label_form -> each image's label from the categories of its annotations
CATEGORY_LABELS = {"one": _one_category, "tags": _category_tags}


def coco_train_table(path: Path, label_form: str) -> pd.DataFrame:
    """The training table (id, label, path) of a COCO-style annotation file; images without an
    annotation are left out, said once."""
    doc = read_annotations(path, ("images", "annotations", "categories"))
    files = _files(doc, path)
    cats = _categories(doc, path)
    stray = sorted(set(cats) - set(files))
    if stray:
        raise UserError(f"annotation file {path}: annotations name image ids {stray[:5]} that its images do not "
                        "list; fix the file")
    labels = CATEGORY_LABELS[label_form](cats, path)
    unlabelled = len(files) - len(labels)
    if unlabelled:
        print(f"note: {counted(unlabelled, 'image')} of {path} {'has' if unlabelled == 1 else 'have'} no annotation "
              f"and {'is' if unlabelled == 1 else 'are'} left out of training")
    ids = [i for i in files if i in labels]
    if not ids:
        raise UserError(f"annotation file {path} annotates none of its images; it needs one annotation per image")
    kept = {i: files[i] for i in ids}
    _require_files(kept, path)
    return pd.DataFrame({"id": ids, "label": [labels[i] for i in ids], "path": [str(kept[i]) for i in ids]})


def coco_test_paths(path: Path, ids: pd.Series, id_col: str, sample: Path) -> list[str]:
    """The file of each sample-submission id, from the test JSON's images."""
    files = _files(read_annotations(path, ("images",)), path)
    unknown = [i for i in ids.astype(str) if i not in files]
    if unknown:
        raise UserError(f"{counted(len(unknown), 'id')} of {sample} ({id_col}) {'is' if len(unknown) == 1 else 'are'} "
                        f"not among the images of {path} (e.g. {unknown[0]}); check data.test_annotations")
    picked = {i: files[i] for i in ids.astype(str)}
    _require_files(picked, path)
    return [str(picked[i]) for i in ids.astype(str)]
