"""Images in one HDF5 container (data.image_store, data.test_image_store): ISIC 2024's
`train-image.hdf5`, JPEG bytes keyed by isic_id.

Each id's value is extracted once into `<cache>/stores/<name>-<key>/` (key: the sha1 of the
container's bytes), as the image file it holds (JPEG or PNG bytes, by their signature) or as an
.npy (an array dataset), written atomically: the loaders' worker processes then read ordinary
files, and no h5py handle crosses a fork.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from src.core.progress import progress
from src.core.utils import UserError, atomic_save, atomic_save_npy, counted
from src.data.images import content_sha1

SIGNATURES = {b"\xff\xd8\xff": ".jpg", b"\x89PNG\r\n\x1a\n": ".png"}  # the encoded images a store may hold
EXTRACTED = {*SIGNATURES.values(), ".npy"}  # what a finished extraction leaves (temporary files end otherwise)
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # an id usable as a file name as it is


def _file_name(image_id: str) -> str:
    return image_id if PLAIN_NAME.fullmatch(image_id) and image_id not in (".", "..") else \
        hashlib.sha1(image_id.encode()).hexdigest()


def _extract(value, stem: Path, store: Path, image_id: str) -> Path:
    """Write one stored value as the file `stem` + its extension and return the file."""
    data = value[()]
    if isinstance(data, (bytes, np.void)) or (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1):
        raw = bytes(data.tobytes() if isinstance(data, np.ndarray) else data)
        ext = next((e for sig, e in SIGNATURES.items() if raw.startswith(sig)), None)
        if ext is None:
            raise UserError(f"{store} holds for id {image_id} {len(raw)} bytes that are neither JPEG nor PNG; store "
                            "encoded images or arrays")
        return atomic_save(stem.parent / (stem.name + ext), lambda tmp: Path(tmp).write_bytes(raw))
    return atomic_save_npy(stem.parent / (stem.name + ".npy"), np.asarray(data))


def store_paths(store: Path, ids: list[str], cache: Path, what: str) -> list[str]:
    """The file of each id, in order, extracted from the HDF5 file `store` on first use; ids the
    store lacks stop the run in one sentence naming some."""
    import h5py  # only where a container is read: --help stays fast

    if not store.is_file():
        raise UserError(f"image store {store} does not exist; copy it into {store.parent} or set "
                        "data.image_store / data.test_image_store")
    folder = cache / "stores" / f"{store.stem}-{content_sha1(store)[:16]}"
    try:
        with h5py.File(store, "r") as f:
            missing = [i for i in ids if i not in f]
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                raise UserError(f"{counted(len(missing), what + ' id')} {'has' if len(missing) == 1 else 'have'} no "
                                f"key in {store} ({len(f)} keys): {shown}; fix the ids, or point the store setting "
                                "at the container of these images")
            done = {p.name[: -len(p.suffix)]: p for p in folder.glob("*") if p.suffix in EXTRACTED} if folder.is_dir() else {}
            todo = [i for i in dict.fromkeys(ids) if _file_name(i) not in done]
            for i in progress(todo, desc=f"extracting {store.name}"):
                done[_file_name(i)] = _extract(f[i], folder / _file_name(i), store, i)
    except OSError as e:
        raise UserError(f"cannot read image store {store} as HDF5 ({e}); replace the file") from None
    return [str(done[_file_name(i)]) for i in ids]
