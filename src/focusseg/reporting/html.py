"""Small, dependency-free HTML building blocks for the offline report pages (escaped text, tables, inline PNGs).

Every page is one self-contained file: inline CSS, images as ``data:image/png;base64`` URIs, no script, no
network reference, so it opens the same from a laptop, an archive or a CI artefact store.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
main{max-width:1180px;margin:0 auto;padding:18px 24px 60px}
h1{font-size:1.6em;margin:.4em 0 .2em}h2{font-size:1.25em;margin:1.6em 0 .5em;border-bottom:2px solid #d5dae1;
padding-bottom:.2em}h3{font-size:1.05em;margin:1.1em 0 .4em}
section{background:#fff;border:1px solid #e1e5ea;border-radius:6px;padding:10px 16px 14px;margin:14px 0}
table{border-collapse:collapse;font-size:.86em;margin:.4em 0}th,td{border:1px solid #d9dee4;padding:3px 7px;
text-align:right}th{background:#eef1f4}td.l,th.l{text-align:left}tr.sum td{font-weight:600;background:#f4f6f8}
.kv td:first-child{text-align:left;color:#4a5562;white-space:nowrap}.kv td{text-align:left}
img{max-width:100%;height:auto;display:block;margin:.4em 0}.note{color:#6b7480;font-style:italic}
.warn{color:#8a4b00;background:#fff5e0;border:1px solid #f0d9a8;padding:6px 10px;border-radius:4px}
.pos{color:#137333}.neg{color:#b3261e}.grid{display:flex;flex-wrap:wrap;gap:10px}.grid>div{flex:1 1 520px}
code{background:#eef1f4;padding:0 3px;border-radius:3px}footer{color:#6b7480;font-size:.8em;margin-top:30px}
"""


def esc(value: Any) -> str:
    """``value`` as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell's text: numbers to ``digits`` decimals, None/NaN as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else \
            f"{value:.{digits}f}"
    return str(value)


def png_img(png: bytes, alt: str) -> str:
    """An ``<img>`` with ``png`` inlined as base64; refuses bytes that are not a PNG (a broken image would
    otherwise pass unnoticed into the page)."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError(f"not a PNG image: {alt}")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1, classes: Sequence[str] = (),
          row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; the first ``left`` columns are left-aligned (names); cells already holding markup are
    passed as :class:`Markup`."""
    out = [f'<table class="{esc(" ".join(classes))}">' if classes else "<table>", "<tr>"]
    out += [f'<th class="l">{esc(h)}</th>' if i < left else f"<th>{esc(h)}</th>" for i, h in enumerate(header)]
    out.append("</tr>")
    for n, row in enumerate(rows):
        cls = row_classes[n] if row_classes is not None and n < len(row_classes) else ""
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        for i, cell in enumerate(row):
            text = cell.html if isinstance(cell, Markup) else esc(fmt(cell))
            out.append(f'<td class="l">{text}</td>' if i < left else f"<td>{text}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


class Markup:
    """Cell content that is already HTML (not escaped again)."""

    def __init__(self, html_text: str) -> None:
        self.html = html_text


def kv_table(items: Iterable[tuple[str, Any]]) -> str:
    """A two-column key/value table."""
    return table(("field", "value"), [(k, v) for k, v in items], left=2, classes=("kv",))


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def warn(text: str) -> str:
    return f'<p class="warn">{esc(text)}</p>'


def section(title: str, body: str, anchor: str | None = None) -> str:
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2>{body}</section>"


def page(title: str, body: str, footer: str = "") -> str:
    """The whole document: doctype, UTF-8, inline CSS, no script."""
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><main>{body}<footer>{esc(footer)}</footer></main></body></html>\n")
