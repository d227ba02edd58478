"""Griffe extension for mkdocstrings: focusseg's docstrings, written with Sphinx roles, rendered as Markdown.

The docstrings use Google sections (``Args:``, ``Returns:``, ``Raises:``) with reStructuredText inline markup:
``:func:`~focusseg.x.f``` roles, double-backtick literals and ``>>>`` doctest lines. Before mkdocstrings parses a
docstring this extension rewrites each role as inline code wrapped in an *optional* cross-reference (a link when
the target is documented on the site, plain code otherwise, never a warning, so ``mkdocs build --strict`` passes),
double backticks as single ones, and doctest lines as a fenced Python block.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([^`<>]+?)`")
LITERAL = re.compile(r"``(.+?)``")


def _role(match: re.Match) -> str:
    short, target = match.group(1) == "~", match.group(2).strip()
    shown = target.rsplit(".", 1)[-1] if short else target
    if "." not in target:  # a bare name: no identifier to look up
        return f"`{shown}`"
    return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'


def _fence_doctests(text: str) -> str:
    """Wrap runs of ``>>>`` lines (with their ``...`` continuations and output) in a fenced Python block."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].strip())
                i += 1
            out += [f"{indent}```python", *(indent + b for b in block), f"{indent}```"]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def markdown(text: str) -> str:
    """A docstring's reStructuredText inline markup rewritten as Markdown."""
    text = ROLE.sub(_role, text)
    text = LITERAL.sub(lambda m: f"`{m.group(1)}`", text)
    return _fence_doctests(text) if ">>>" in text else text


class SphinxRoles(Extension):
    """Rewrite every loaded object's docstring before mkdocstrings parses it."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
