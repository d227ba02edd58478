"""MkDocs hook: the CLI reference page, generated from the ``focusseg`` command itself.

Walks the Typer app :data:`focusseg.cli.app` (through the click command Typer builds from it) and writes one
section per command: its usage line, its help text and a table of its arguments and options with their defaults.
The page is added to the site as ``reference/cli.md`` when MkDocs collects its files, so it is never stale and
never committed: a new command or option appears on the next ``mkdocs build``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

PAGE = "reference/cli.md"
ROOT = Path(__file__).resolve().parents[2]


def _cli_group() -> Any:
    """The click group Typer builds from ``focusseg.cli.app`` (the checkout's ``src/`` first on the path)."""
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    import typer

    from focusseg.cli import app

    return typer.main.get_command(app)


def command_names() -> list[str]:
    """The CLI's commands, in ``focusseg --help`` order (hidden ones left out)."""
    group = _cli_group()
    return [name for name, cmd in group.commands.items() if not getattr(cmd, "hidden", False)]


def _cell(text: str) -> str:
    """Text for one markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(param: Any) -> str:
    """The default of an option as the table shows it ("" when there is none worth showing)."""
    if getattr(param, "required", False):
        return "required"
    value = getattr(param, "default", None)
    if callable(value):
        return ""
    secondary = getattr(param, "secondary_opts", None) or []
    if getattr(param, "is_flag", False) and secondary:
        return f"`{param.opts[0]}`" if value else f"`{secondary[0]}`"
    if getattr(param, "is_flag", False):
        return "off" if not value else "on"
    if value is None or value == [] or value == ():
        return ""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f"`{value}`"


def _usage(cmd: Any, ctx: Any) -> str:
    """The command's usage line, arguments written as NAME."""
    usage = cmd.get_usage(ctx).strip()
    usage = re.sub(r"^Usage:\s*", "", usage)
    return re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), " ".join(usage.split()))


def _help(text: str) -> str:
    """Help text as markdown: the click paragraph marker dropped, paragraphs kept."""
    text = (text or "").replace("\b\n", "").replace("\b", "")
    return "\n\n".join(" ".join(par.split()) for par in re.split(r"\n\s*\n", text.strip()) if par.strip())


def render() -> str:
    """The whole CLI reference page as markdown."""
    group = _cli_group()
    root = group.context_class(group, info_name="focusseg")
    lines = [
        "# CLI reference",
        "",
        "Generated from the `focusseg` command itself when the site is built (`docs/hooks/cli_reference.py`),",
        "so it lists exactly the commands and options of this version. Every command also prints this with",
        "`focusseg COMMAND --help`. `--debug` (anywhere on the command line, any command) shows the traceback of an",
        "unexpected error; without it an error is one line, `error: <file>: <problem>`.",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    commands = [(name, cmd) for name, cmd in group.commands.items() if not getattr(cmd, "hidden", False)]
    for name, cmd in commands:
        first = _help(cmd.help or "").split("\n\n")[0]
        lines.append(f"| [`{name}`](#{name}) | {_cell(first)} |")
    for name, cmd in commands:
        ctx = cmd.context_class(cmd, info_name=name, parent=root)
        lines += ["", f"## `{name}` {{#{name}}}", "", "```text", _usage(cmd, ctx), "```", "", _help(cmd.help or "")]
        params = [p for p in cmd.params if not getattr(p, "hidden", False)]
        arguments = [p for p in params if getattr(p, "param_type_name", "") == "argument"]
        options = [p for p in params if getattr(p, "param_type_name", "") != "argument"]
        if arguments:
            lines += ["", "**Arguments**", "", "| argument | | description |", "| --- | --- | --- |"]
            for p in arguments:
                need = "required" if p.required else "optional"
                lines.append(f"| `{p.name.upper()}` | {need} | {_cell(p.help or '')} |")
        lines += ["", "**Options**", "", "| option | default | description |", "| --- | --- | --- |"]
        for p in options:
            try:
                shown = p.get_help_record(ctx)[0]
            except Exception:  # an option kind this click cannot describe: fall back to its names
                shown = " / ".join(list(p.opts) + list(p.secondary_opts))
            if p.secondary_opts and " / " not in shown:
                shown = " / ".join(list(p.opts) + list(p.secondary_opts))
            lines.append(f"| `{_cell(shown)}` | {_default(p)} | {_cell(p.help or '')} |")
        lines.append("| `--help` | | Show the help and exit. |")
    return "\n".join(lines) + "\n"


def on_files(files: Files, config: Any) -> Files:
    """Add the generated CLI reference page to the site's files."""
    files.append(File.generated(config, PAGE, content=render()))
    return files
