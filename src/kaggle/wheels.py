"""Wheels for an offline Kaggle kernel: what the Kaggle image lacks, downloaded when the bundle is
built, installed in the notebook where the image's own version does not fit.

Which packages: this project's runtime requirements, checked against the Kaggle image's packages
(kaggle_image.txt, with the image's Python version). A requirement the image satisfies is left to
the image (with the dependencies it ships); one it lacks, or holds at a version the requirement
excludes, is bundled at the version installed here, and its own requirements are checked the same
way, so a bundled package comes with the exact dependencies it needs (pydantic with its pinned
pydantic-core, albucore with stringzilla and simsimd). Wheels are manylinux x86_64 or pure-Python
builds for the image's Python.

Standard library only at import time: the notebook imports this before anything is installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = "kaggle-image-cls"  # this project's distribution: its requirements are what the code needs
IMAGE_FILE = Path(__file__).with_name("kaggle_image.txt")
# Kaggle's notebook image runs Ubuntu 22.04 (glibc 2.35): every manylinux tag up to 2.35 installs there
# (pylibjpeg-libjpeg publishes manylinux_2_31/2_34 wheels only).
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "any")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_image(path: Path = IMAGE_FILE) -> tuple[dict[str, str], dict[str, str]]:
    """({package: version} of the Kaggle image, its header fields: image, python)."""
    packages, header = {}, {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].strip().partition(": ")
            if key in ("image", "python"):
                header[key] = value
        elif "==" in line:
            name, version = line.strip().split("==", 1)
            packages[canonical(name)] = version
    return packages, header


def _environment(python: str) -> dict[str, str]:
    return {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def needed_wheels(image: dict[str, str], python: str, project: str = PROJECT) -> dict[str, dict]:
    """{package: {version, requires}} to bundle: the project's requirements the image does not
    satisfy, at the version installed here, and theirs, recursively (see the module docstring)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    env = _environment(python)
    todo = [Requirement(r) for r in importlib.metadata.requires(project) or []]
    needed: dict[str, dict] = {}
    while todo:
        req = todo.pop(0)
        if req.marker is not None and not req.marker.evaluate(env):
            continue  # another platform's, or an extra's
        name = canonical(req.name)
        have = image.get(name)
        if name in needed or (have is not None and req.specifier.contains(Version(have).public, prereleases=True)):
            continue
        version = importlib.metadata.version(req.name)
        needed[name] = {"version": version, "requires": str(req.specifier) or ">=0"}
        todo += [Requirement(r) for r in importlib.metadata.requires(req.name) or []]
    return needed


def download_wheels(dest: Path, image_path: Path = IMAGE_FILE, python: str | None = None) -> dict[str, dict]:
    """`pip download` each needed wheel (needed_wheels) for the image's Python and Linux x86_64
    into `dest`; write dest/wheels.json ({name: {file, version, requires}}) and return it."""
    image, header = read_image(image_path)
    python = python or header.get("python", "3.12")
    needed = needed_wheels(image, python)
    dest.mkdir(parents=True, exist_ok=True)
    index = {}
    if needed:
        abi = "cp" + python.replace(".", "")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none",
               *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest),
               *(f"{n}=={w['version']}" for n, w in needed.items())]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = [line for line in proc.stderr.splitlines() if line.strip() and "WARNING" not in line][-1:]
            raise RuntimeError(f"pip download failed ({' '.join(tail)[:200]})")
    for name, w in needed.items():
        found = [p for p in dest.glob("*.whl")
                 if canonical(p.name.split("-")[0]) == name and p.name.split("-")[1] == w["version"]]
        if not found:
            raise RuntimeError(f"pip download wrote no wheel for {name}=={w['version']}")
        index[name] = {"file": found[0].name, **w}
    (dest / "wheels.json").write_text(json.dumps(
        {"image": header.get("image", ""), "python": python, "wheels": index}, indent=2))
    return index


def installed_fits(name: str, requires: str) -> bool:
    """Whether the installed version of a package satisfies a requirement such as ">=1.0"."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    try:
        return SpecifierSet(requires).contains(Version(importlib.metadata.version(name)).public, prereleases=True)
    except importlib.metadata.PackageNotFoundError:
        return False


def wheel_target() -> str:
    """Where the notebook installs bundled wheels (first on sys.path): KAGGLE_WHEELS_TARGET, or a
    folder in the temporary directory."""
    return os.environ.get("KAGGLE_WHEELS_TARGET") or os.path.join(tempfile.gettempdir(), "kaggle_wheels")


def install_wheels(folder: str | Path) -> list[str]:
    """Install the bundled wheels whose package is missing or too old here, offline
    (`pip install --no-index --no-deps --target`, put first on sys.path); return what was installed."""
    index_path = Path(folder) / "wheels.json"
    if not index_path.is_file():
        print("no bundled wheels (the bundle was built with --no-wheels)")
        return []
    index = json.loads(index_path.read_text())
    wheels = index.get("wheels", index)  # (bundles before image checks held the wheels at the top level)
    todo = {n: w for n, w in wheels.items() if not installed_fits(n, w["requires"])}
    target = wheel_target()
    if todo:
        missing = [w["file"] for w in todo.values() if not (Path(folder) / w["file"]).is_file()]
        if missing:
            raise FileNotFoundError(f"the bundle lists wheels it does not hold: {missing}")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", target,
                        *(str(Path(folder) / w["file"]) for w in todo.values())], check=True)
        sys.path.insert(0, target)
    importlib.invalidate_caches()
    installed = [f"{n}=={w['version']}" for n, w in todo.items()]
    print("installed " + (", ".join(installed) if installed else "nothing: the image's versions fit"))
    return installed


def hide_lacking(lacks: list[str], modules: dict[str, str]) -> None:
    """Rehearsal only, before anything else runs: hide the packages the Kaggle image lacks, as they
    are hidden on Kaggle, from imports and from importlib.metadata, until a bundled wheel installs
    them into wheel_target().

    Args:
        lacks: the distributions the image lacks (MANIFEST.json's image.lacks), canonical names.
        modules: top-level module -> the lacked distributions that provide it (for the error).
    """
    target = wheel_target()

    def in_target(top: str) -> bool:
        return any(os.path.exists(os.path.join(target, top + ext)) for ext in ("", ".py"))

    class KaggleImage:  # a meta path finder that refuses the lacked modules
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in modules and not in_target(top):
                raise ModuleNotFoundError(f"No module named {top!r}: the Kaggle image lacks {modules[top]} and no "
                                          "bundled wheel installed it", name=top)
            return None

    sys.meta_path.insert(0, KaggleImage())
    version = importlib.metadata.version

    def image_version(name: str) -> str:
        dist = canonical(name)
        if dist in lacks and not any(canonical(d.name.split("-")[0]) == dist for d in Path(target).glob("*.dist-info")):
            raise importlib.metadata.PackageNotFoundError(name)
        return version(name)

    importlib.metadata.version = image_version
