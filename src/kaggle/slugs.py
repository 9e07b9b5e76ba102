"""Kaggle names: the slugs of the datasets and notebooks this package builds, derived from the
experiment names and checked against the rules the kaggle CLI enforces before any upload.

Standard library only (and UserError): the command's --help imports it."""

from __future__ import annotations

import os
import re

from src.core.utils import UserError

# What the kaggle CLI accepts (it checks before any upload): a dataset slug and title of 6 to 50
# characters, a kernel slug and title of at least 5 (and Kaggle's 50 at most).
DATASET_SLUG, KERNEL_SLUG = (6, 50), (5, 50)


def slug(text: str) -> str:
    """Lowercase letters, digits and single hyphens, at most 50 characters."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]+", "-", text.lower())).strip("-")[:50]


def derived(name: str, suffix: str) -> str:
    """<name>-<suffix>, the name cut so the whole fits 50 characters (a short name still gives 6+)."""
    return f"{(name or 'ensemble')[:50 - len(suffix) - 1].strip('-')}-{suffix}"


def kaggle_user() -> str:
    """$KAGGLE_USERNAME, or a placeholder the build warns about."""
    return os.environ.get("KAGGLE_USERNAME", "your-kaggle-username")


def check_slug(what: str, value: str, bounds: tuple[int, int]) -> None:
    """`value` is USER/SLUG with a slug the kaggle CLI takes; else one sentence naming the flag `what`."""
    if value.count("/") != 1 or not all(value.split("/")):
        raise UserError(f"{what} {value} is not USER/SLUG; give your Kaggle user name and a slug")
    name = value.split("/")[1]
    if not bounds[0] <= len(name) <= bounds[1] or name != slug(name):
        raise UserError(f"{what} {value}: the slug must be {bounds[0]} to {bounds[1]} lowercase letters, digits and "
                        f"hyphens (it has {len(name)} characters); give another, e.g. {value.split('/')[0]}/"
                        f"{derived(slug(name), 'bundle' if what == '--dataset' else 'inference')}")
