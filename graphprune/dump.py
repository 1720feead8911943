"""Groups stage, for people: draw the groups (``Groups.to_html``, ``Groups.to_dot``).

The HTML page is one self-contained file (inline CSS and SVG, no scripts, nothing fetched): a matrix
with a row per module that holds a member and a column per group (filled: the module produces the
group's channels, hollow: it reads them, dot: a norm, bias or buffer follows them), prunable groups
in colour, frozen ones grey with their reason on hover, and a table listing every group's members.
The DOT graph (for graphviz) links the modules producing each group to those reading it.
"""
from __future__ import annotations

import colorsys
import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .groups import Group, Groups

CELL, LEFT, TOP = 12, 260, 70
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}
.summary span{margin-right:1.5em}.legend span{margin-right:1.2em}
table{border-collapse:collapse;font-size:12px}td,th{border-bottom:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
td.members{font-family:monospace;max-width:70em}tr:target{background:#fff3b0}.swatch{display:inline-block;width:.9em;height:.9em}
.matrix{overflow:auto;border:1px solid #ccc;max-height:80vh}svg text{font:10px monospace}
g.col:target rect.band{fill:#fff3b0}.frozen{color:#777}.inexact{color:#b35c00}
"""


def colour(g: "Group") -> str:
    """Prunable groups get spread-out hues (golden angle); frozen ones grey.

    >>> from graphprune.groups import Group
    >>> colour(Group(id=1, width=4, unit="channel", members=())), colour(Group(0, 4, "channel", (), frozen="x"))
    ('#25b14e', '#9e9e9e')
    """
    if g.frozen:
        return "#9e9e9e"
    r, gr, b = colorsys.hls_to_rgb((g.id * 137.508 % 360) / 360, 0.42, 0.65)
    return f"#{round(r * 255):02x}{round(gr * 255):02x}{round(b * 255):02x}"


def _status(g: "Group") -> str:
    return f"frozen: {g.frozen}" if g.frozen else (f"inexact: {g.inexact}" if g.inexact else "prunable")


def _owner(fqn: str) -> str:
    return fqn.rsplit(".", 1)[0] if "." in fqn else ""


def _layout(groups: "Groups") -> tuple[list[str], list["Group"]]:
    """Rows: modules holding a member, in the model's order; columns: prunable groups, then frozen
    ones, each ordered by the first row it touches (so the matrix reads top-left to bottom-right)."""
    owners = {_owner(m.fqn) for g in groups for m in g.members}
    rows = [n for n, _ in groups.traced.model.named_modules() if n in owners]
    rows += sorted(owners - set(rows))
    at = {n: i for i, n in enumerate(rows)}
    first = lambda g: min((at[_owner(m.fqn)] for m in g.members), default=0)
    return rows, sorted(groups, key=lambda g: (g.frozen is not None, first(g), g.id))


def _cells(g: "Group") -> dict[str, tuple[str, list[str]]]:
    """Per module: the strongest role of its members in the group ('out' > 'in' > other) and their names."""
    out: dict[str, tuple[str, list[str]]] = {}
    rank = {"out": 0, "in": 1, "": 2}
    for m in g.members:
        role = "out" if "out" in m.roles else "in" if "in" in m.roles else ""
        old, names = out.get(_owner(m.fqn), ("", []))
        best = role if rank[role] < rank[old] or not names else old
        out[_owner(m.fqn)] = (best, names + [f"{m.fqn}:{m.dim}" + (f" ({', '.join(m.roles)})" if m.roles else "")])
    return out


def _svg(rows: list[str], cols: list["Group"]) -> str:
    e = html.escape
    width, height = LEFT + CELL * len(cols) + 10, TOP + CELL * len(rows) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, name in enumerate(rows):
        y = TOP + i * CELL
        if i % 2:
            parts.append(f'<rect x="0" y="{y}" width="{width}" height="{CELL}" fill="#f6f6f6"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 9}" text-anchor="end">{e(name or "<root>")}</text>')
    at = {n: i for i, n in enumerate(rows)}
    for j, g in enumerate(cols):
        parts.append(_column(g, LEFT + j * CELL, at, len(rows)))
    parts.append("</svg>")
    return "".join(parts)


def _column(g: "Group", x: int, at: dict[str, int], n_rows: int) -> str:
    e, c = html.escape, colour(g)
    cells = _cells(g)
    ys = sorted(TOP + at[m] * CELL for m in cells)
    out = [f'<g class="col" id="col{g.id}" data-group="{g.id}"><title>group {g.id}: {e(g.structure)}, '
           f'{e(_status(g))}</title>',
           f'<rect class="band" x="{x}" y="{TOP}" width="{CELL}" height="{n_rows * CELL}" fill="none"/>',
           f'<text x="{x + 9}" y="{TOP - 4}" transform="rotate(-60 {x + 9} {TOP - 4})">{g.id}</text>']
    if ys:
        dash = ' stroke-dasharray="2,2"' if g.frozen or g.inexact else ""
        out.append(f'<line x1="{x + 6}" y1="{ys[0] + 6}" x2="{x + 6}" y2="{ys[-1] + 6}" stroke="{c}"{dash}/>')
    for module, (role, names) in cells.items():
        y = TOP + at[module] * CELL
        tip = f"<title>group {g.id} in {e(module or '<root>')}: {e('; '.join(names))}</title>"
        if role == "out":
            out.append(f'<rect x="{x + 2}" y="{y + 2}" width="8" height="8" fill="{c}">{tip}</rect>')
        elif role == "in":
            out.append(f'<rect x="{x + 2.5}" y="{y + 2.5}" width="7" height="7" fill="white" stroke="{c}" '
                       f'stroke-width="1.5">{tip}</rect>')
        else:
            out.append(f'<circle cx="{x + 6}" cy="{y + 6}" r="2.5" fill="{c}">{tip}</circle>')
    return "".join(out) + "</g>"


def _table(cols: list["Group"]) -> str:
    e = html.escape
    rows = ["<table><tr><th>id</th><th>structure</th><th>status</th><th>module</th><th>members</th>"
            "<th>attributes</th></tr>"]
    for g in sorted(cols, key=lambda g: g.id):
        cls = "frozen" if g.frozen else "inexact" if g.inexact else ""
        members = ", ".join(f"{m.fqn}:{m.dim}" + (f" ({'/'.join(m.roles)})" if m.roles else "") for m in g.members)
        attrs = ", ".join(f"{a.fqn or '<root>'}.{a.attr}" for a in g.attrs)
        rows.append(f'<tr id="g{g.id}" data-group="{g.id}" class="{cls}"><td><a href="#col{g.id}">'
                    f'<span class="swatch" style="background:{colour(g)}"></span> {g.id}</a></td>'
                    f"<td>{e(g.structure)}</td><td>{e(_status(g))}</td><td>{e(g.module or '<root>')}</td>"
                    f'<td class="members">{e(members)}</td><td>{e(attrs)}</td></tr>')
    return "".join(rows) + "</table>"


def to_html(groups: "Groups", title: str | None = None) -> str:
    """One self-contained HTML page that lists and draws every group.

    >>> import timm
    >>> from graphprune.groups import find_groups
    >>> page = to_html(find_groups(timm.create_model("resnet18")))
    >>> page.startswith("<!DOCTYPE html>") and "<svg" in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    True
    """
    e = html.escape
    rows, cols = _layout(groups)
    model = type(groups.traced.model).__qualname__
    title = title or f"graphprune groups of {model}"
    n_frozen = sum(g.frozen is not None for g in cols)
    unsupported = "".join(f"<li>{e(u)}</li>" for u in groups.coupling.unsupported)
    return "".join([
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>',
        f"<style>{STYLE}</style></head><body><h1>{e(title)}</h1>",
        f'<p class="summary"><span>{len(cols)} groups</span><span>{len(cols) - n_frozen} prunable</span>'
        f"<span>{n_frozen} frozen</span><span>{len(rows)} modules</span>"
        f"<span>{len(groups.coupling.unsupported)} ops without a rule</span>"
        f"<span>traced with {e(groups.traced.method)}</span></p>",
        '<p class="legend"><span>&#9632; produces the channels (out)</span><span>&#9633; reads them (in)</span>'
        "<span>&#8226; follows them (norm, bias, buffer)</span><span>grey: frozen (hover for why)</span>"
        "<span>dashed: frozen or inexact</span></p>",
        f'<div class="matrix">{_svg(rows, cols)}</div>',
        f"<h2>Ops without a coupling rule</h2><ul>{unsupported}</ul>" if unsupported else "",
        f"<h2>Every group</h2>{_table(cols)}</body></html>\n"])


def to_dot(groups: "Groups") -> str:
    """A graphviz DOT graph: modules as boxes, each group spanning several modules as a node in its
    colour, linked from the modules producing its channels and to those reading (or following)
    them; frozen groups dashed grey with the reason. Edges grow with members, not their product.

    >>> import timm
    >>> from graphprune.groups import find_groups
    >>> text = to_dot(find_groups(timm.create_model("resnet18")))
    >>> text.startswith("digraph graphprune {") and '"conv1" -> ".g0"' in text
    True
    """
    q = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    rows, cols = _layout(groups)
    modules = dict(groups.traced.model.named_modules())
    lines = ["digraph graphprune {", '  graph [rankdir=TB, fontname="Helvetica"];',
             '  node [shape=box, style="rounded,filled", fillcolor="#f5f5f5", fontname="Helvetica", fontsize=10];',
             '  edge [arrowsize=0.6];']
    for name in rows:
        kind = type(modules[name]).__name__ if name in modules else ""
        # node ids: the module's FQN ("" for the root), groups ".g<id>": no FQN starts with a dot
        lines.append(f"  {q(name)} [label={q((name or '<root>') + chr(10) + kind)}];")
    for g in cols:
        cells = _cells(g)
        lines.append(f"  // group {g.id}: {g.structure}, {_status(g)}".replace("\n", " "))
        if len(cells) < 2:
            continue  # a group inside one module (kernel sizes): nothing to link
        hub, c = q(f".g{g.id}"), colour(g)
        dashed = ", style=dashed" if g.frozen or g.inexact else ""
        lines.append(f"  {hub} [shape=ellipse, style=\"filled{',dashed' if dashed else ''}\", fillcolor={q(c)}, "
                     f"fontcolor=white, label={q(f'g{g.id}: {g.structure}')}, tooltip={q(_status(g))}];")
        for module, (role, _) in cells.items():
            edge = f"{q(module)} -> {hub}" if role == "out" else f"{hub} -> {q(module)}"
            lines.append(f"  {edge} [color={q(c)}{dashed if role else ', style=dotted'}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
