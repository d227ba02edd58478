"""``focusseg plugins``: the plugins loaded (installed entry points and ``--plugin`` modules) and what each
registered, from where."""

from __future__ import annotations

from focusseg.cli.options import console


def plugins() -> None:
    """List the plugins loaded, where they come from, and the networks, losses, strategies, augmentations and
    recipes each registered.

    Installed plugins declare an entry point in the group `focusseg.plugins`; a local module is named with
    `focusseg --plugin MODULE plugins`. Example: `focusseg plugins`
    """
    from rich.table import Table

    from focusseg.api import list_plugins
    from focusseg.plugins import ENTRY_POINT_GROUP, loaded_plugins

    rows = list_plugins()
    sources = loaded_plugins()
    if not sources and not rows:
        console.print(f"no plugins loaded (install a package with a '{ENTRY_POINT_GROUP}' entry point, or name a "
                      "module with focusseg --plugin MODULE)", highlight=False)
        return
    table = Table("plugin", "version", "from", "kind", "name", title="plugins")
    shown = set()
    for src, kind, name in rows:
        table.add_row(src.name, src.version or "-", f"{src.via} {src.module}", kind, name)
        shown.add(src)
    for src in sources:
        if src not in shown:
            table.add_row(src.name, src.version or "-", f"{src.via} {src.module}", "-", "(registered nothing)")
    console.print(table, highlight=False)
