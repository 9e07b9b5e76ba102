"""A self-contained HTML page: sections of text, tables and PNGs embedded as base64 data URIs, so
the file opens in any browser, offline, alone (mailed, attached to a Kaggle discussion)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from src.core.utils import atomic_write_text

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { border-bottom: 2px solid #345; } h2 { margin-top: 2em; color: #345; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eef; } tr:nth-child(even) td { background: #f8f8fb; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0; }
pre { background: #f4f4f4; padding: 0.8em; font-size: 12px; max-height: 30em; overflow: auto; }
.note { color: #555; font-size: 13px; } .warn { color: #a30; font-weight: bold; }
"""


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


@dataclass
class Page:
    """Sections appended in order, then written as one file."""

    title: str
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str, cls: str = "note") -> None:
        self.parts.append(f'<p class="{cls}">{html.escape(text)}</p>')

    def table(self, df: pd.DataFrame, digits: int = 4) -> None:
        df = df.copy()
        for c in df.columns:  # nullable integers print <NA> whatever na_rep says
            if isinstance(df[c].dtype, pd.Int64Dtype):
                df[c] = df[c].astype(object).where(df[c].notna(), "")
        self.parts.append(df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.{digits}f}", border=0))

    def image(self, path: Path, alt: str) -> None:
        self.parts.append(f'<img src="{png_data_uri(path)}" alt="{html.escape(alt)}">')

    def code(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def write(self, path: Path) -> Path:
        body = "\n".join(self.parts)
        doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
               f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n")
        return atomic_write_text(path, doc)
