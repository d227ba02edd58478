"""MkDocs hook: pages made from the repository's own files at build time, so the site never holds stale copies.

* ``BENCHMARKS.md`` (every measured figure, written by the benchmark scripts) becomes ``benchmarks.md``, with the
  figures it shows (``benchmarks/results/*.png``) at the same relative paths; an image written by its bare name
  is looked up in ``benchmarks/results/``.
* ``CHANGELOG.md`` becomes ``changelog.md``.
* The README's section "What focusseg guarantees" (one table, kept in the README where it is maintained) becomes
  ``concepts/guarantees.md``.

Links to the other root files point at their site pages; links to ``docs/`` pages are made relative to the page;
a link to any other repository file (a script, a result table) becomes code naming it, so that the strict build
checks only links that can work.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
RESULTS = "benchmarks/results"
PAGES = {"BENCHMARKS.md": "benchmarks.md", "CHANGELOG.md": "changelog.md"}
GUARANTEES_HEADING = "## What focusseg guarantees"
GUARANTEES_PAGE = "concepts/guarantees.md"
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _resolve(target: str) -> str | None:
    """The repository path a relative link of a root file points to, or None when no such file exists."""
    path = target.split("#", 1)[0]
    if not path:
        return None
    for candidate in (path, f"{RESULTS}/{Path(path).name}"):
        if (ROOT / candidate).is_file():
            return candidate
    return None


def rewrite(text: str, page: str, wanted: set[str]) -> str:
    """Rewrite the relative links of a root file shown as the site page ``page``.

    Args:
        text: the file's markdown.
        page: the page's path in the site (``benchmarks.md``).
        wanted: collects the repository paths of the images the page shows.

    Returns:
        The markdown with every relative link pointing at a site file, or written as code.
    """
    here = posixpath.dirname(page)

    def site_link(site_path: str) -> str:
        return posixpath.relpath(site_path, here or ".")

    def sub(match: re.Match) -> str:
        bang, label, target = match.groups()
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            return match.group(0)
        path, _, anchor = target.partition("#")
        anchor = f"#{anchor}" if anchor else ""
        if path in PAGES:
            return f"{bang}[{label}]({site_link(PAGES[path])}{anchor})"
        if path.startswith("docs/") and (ROOT / path).is_file():
            return f"{bang}[{label}]({site_link(path[len('docs/'):])}{anchor})"
        found = _resolve(target)
        if bang and found is not None:
            wanted.add(found)
            return f"![{label}]({site_link(found)})"
        return f"{label} (`{found or path}`)" if label else f"`{found or path}`"

    # a <details> block's markdown (a table) is rendered too (md_in_html)
    text = re.sub(r"<details>", '<details markdown="1">', text)
    return LINK.sub(sub, text)


def readme_section(heading: str) -> str:
    """The README's section under ``heading`` (up to the next heading of the same level), or "" if absent."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.find(f"\n{heading}\n")
    if start < 0:
        return ""
    body = text[start + len(heading) + 2 :]
    end = re.search(r"^## ", body, flags=re.MULTILINE)
    return body[: end.start()] if end else body


def guarantees_page(wanted: set[str]) -> str:
    """The guarantees page: the README's section with a short introduction."""
    section = readme_section(GUARANTEES_HEADING).strip()
    if not section:
        section = "The README of this checkout has no section *What focusseg guarantees*."
    intro = (
        "# What focusseg guarantees\n\n"
        "The promises below are the README's own table, read from `README.md` when the site is built. Each is backed "
        "by tests that run in `make test`; the malformed-input corpus and its counts are on the "
        "[benchmarks page](../benchmarks.md), the project rules that keep the promises in "
        "[Architecture](../ARCHITECTURE.md#rules).\n\n"
    )
    return intro + rewrite(section, GUARANTEES_PAGE, wanted) + "\n"


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages and the images they show to the site's files."""
    wanted: set[str] = set()
    for source, page in PAGES.items():
        path = ROOT / source
        if path.is_file():
            files.append(File.generated(config, page, content=rewrite(path.read_text(encoding="utf-8"), page, wanted)))
    files.append(File.generated(config, GUARANTEES_PAGE, content=guarantees_page(wanted)))
    for image in sorted(wanted):
        if files.get_file_from_path(image) is None:
            files.append(File.generated(config, image, abs_src_path=str(ROOT / image)))
    return files
