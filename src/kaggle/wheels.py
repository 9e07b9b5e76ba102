"""Wheels for an offline Kaggle kernel: downloaded when the bundle is built, installed in the
notebook only where the image's own version does not satisfy the project's requirement.

Standard library only at import time: the notebook imports this before anything is installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

# Pure-Python packages the code needs beyond a stock Kaggle image (which ships torch,
# torchvision, numpy, pandas, scikit-learn, scipy, opencv, PyYAML, Pillow, safetensors, tqdm):
# the requirement the code needs (pyproject.toml) and the albumentations 2 helper it pins.
KERNEL_PACKAGES = {
    "timm": ">=1.0.9",
    "albumentations": ">=2.0.5",
    "albucore": ">=0.0.24",
    "pydantic": ">=2.7",
    "annotated-types": ">=0.6",
    "typing-inspection": ">=0.4",
}


def _normalized(name: str) -> str:
    return name.lower().replace("_", "-")


def download_wheels(dest: Path, packages: dict[str, str] = KERNEL_PACKAGES) -> dict[str, dict]:
    """`pip download` the installed version of each package as a pure-Python wheel into `dest`;
    write dest/wheels.json ({name: {file, version, requires}}) and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = {name: importlib.metadata.version(name) for name in packages}
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.10", "--platform", "any", "-d", str(dest), *(f"{n}=={v}" for n, v in pins.items())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.splitlines() if line.strip() and "WARNING" not in line][-1:]
        raise RuntimeError(f"pip download failed ({' '.join(tail)[:200]})")
    index = {}
    for name, version in pins.items():
        found = [p for p in dest.glob("*.whl")
                 if _normalized(p.name.split("-")[0]) == _normalized(name) and p.name.split("-")[1] == version]
        if not found:
            raise RuntimeError(f"pip download wrote no wheel for {name}=={version}")
        index[name] = {"file": found[0].name, "version": version, "requires": packages[name]}
    (dest / "wheels.json").write_text(json.dumps(index, indent=2))
    return index


def installed_fits(name: str, requires: str) -> bool:
    """Whether the installed version of a package satisfies a requirement such as ">=1.0"."""
    from packaging.specifiers import SpecifierSet

    try:
        return importlib.metadata.version(name) in SpecifierSet(requires)
    except importlib.metadata.PackageNotFoundError:
        return False


def install_wheels(folder: str | Path) -> list[str]:
    """Install the bundled wheels whose package is missing or too old here, offline
    (`pip install --no-index --no-deps`); return what was installed."""
    index_path = Path(folder) / "wheels.json"
    if not index_path.is_file():
        print("no bundled wheels (the bundle was built with --no-wheels)")
        return []
    installed = []
    for name, w in json.loads(index_path.read_text()).items():
        if installed_fits(name, w["requires"]):
            continue
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                        str(Path(folder) / w["file"])], check=True)
        installed.append(f"{name}=={w['version']}")
    importlib.invalidate_caches()
    print("installed " + (", ".join(installed) if installed else "nothing: the image's versions fit"))
    return installed
