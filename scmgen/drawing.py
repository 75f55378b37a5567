"""Pictures of a graph (PNG, SVG, DOT) with a layered layout: each node one row below its
deepest parent, so the causal flow reads top to bottom without needing graphviz."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from scmgen.errors import UsageError
from scmgen.model import SCM

COLOURS = {"noise": "#e8e8e8", "label": "#cfe3ff", "mechanism": "#ffe2b8"}
BOX_W, BOX_H, GAP_X, GAP_Y = 150, 44, 30, 50


def layout(model: SCM) -> dict[str, tuple[int, int]]:
    """Top-left corner of each node's box."""
    depth: dict[str, int] = {}
    for n in model.order:
        depth[n] = max((depth[p] + 1 for p in model.graph.predecessors(n)), default=0)
    rows: dict[int, list[str]] = {}
    for n in model.order:
        rows.setdefault(depth[n], []).append(n)
    width = max(len(r) for r in rows.values()) * (BOX_W + GAP_X)
    pos = {}
    for d, names in rows.items():
        offset = (width - len(names) * (BOX_W + GAP_X)) // 2
        for i, n in enumerate(names):
            pos[n] = (GAP_X // 2 + offset + i * (BOX_W + GAP_X), 20 + d * (BOX_H + GAP_Y))
    return pos


def _caption(model: SCM, name: str) -> str:
    node = model.spec.nodes[name]
    if node.kind == "mechanism":
        return node.plugin
    return f"noise, dim {node.dim}" if node.kind == "noise" else f"label, {node.classes} classes"


def to_dot(model: SCM) -> str:
    lines = [f'digraph "{model.spec.name}" {{', "  rankdir=TB; node [shape=box, style=filled];"]
    for n in model.order:
        periph = ", peripheries=2" if n in model.spec.intervenable else ""
        lines.append(f'  {n} [label="{n}\\n{_caption(model, n)}", fillcolor="{COLOURS[model.spec.nodes[n].kind]}"{periph}];')
    lines += [f"  {u} -> {v};" for u, v in sorted(model.graph.edges)]
    return "\n".join(lines + ["}"]) + "\n"


def to_svg(model: SCM) -> str:
    pos = layout(model)
    w = max(x for x, _ in pos.values()) + BOX_W + GAP_X
    h = max(y for _, y in pos.values()) + BOX_H + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             '<defs><marker id="a" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto">'
             '<path d="M0,0 L8,4 L0,8 z"/></marker></defs>']
    for u, v in model.graph.edges:
        (x1, y1), (x2, y2) = pos[u], pos[v]
        parts.append(f'<line x1="{x1 + BOX_W // 2}" y1="{y1 + BOX_H}" x2="{x2 + BOX_W // 2}" y2="{y2}" '
                     'stroke="black" marker-end="url(#a)"/>')
    for n, (x, y) in pos.items():
        stroke = 3 if n in model.spec.intervenable else 1
        parts.append(f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" '
                     f'fill="{COLOURS[model.spec.nodes[n].kind]}" stroke="black" stroke-width="{stroke}"/>')
        parts.append(f'<text x="{x + 6}" y="{y + 18}" font-weight="bold">{n}</text>')
        parts.append(f'<text x="{x + 6}" y="{y + 35}">{_caption(model, n)}</text>')
    return "\n".join(parts + ["</svg>"]) + "\n"


def to_png(model: SCM) -> Image.Image:
    pos = layout(model)
    w = max(x for x, _ in pos.values()) + BOX_W + GAP_X
    h = max(y for _, y in pos.values()) + BOX_H + 20
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for u, v in model.graph.edges:
        (x1, y1), (x2, y2) = pos[u], pos[v]
        a, b = (x1 + BOX_W // 2, y1 + BOX_H), (x2 + BOX_W // 2, y2)
        draw.line([a, b], fill="black", width=1)
        draw.ellipse([b[0] - 3, b[1] - 6, b[0] + 3, b[1]], fill="black")
    for n, (x, y) in pos.items():
        width = 3 if n in model.spec.intervenable else 1
        draw.rounded_rectangle([x, y, x + BOX_W, y + BOX_H], 6, fill=COLOURS[model.spec.nodes[n].kind],
                               outline="black", width=width)
        draw.text((x + 6, y + 6), n, fill="black", font=font)
        draw.text((x + 6, y + 24), _caption(model, n), fill="black", font=font)
    return image


def draw_graph(model: SCM, out: str | Path) -> Path:
    """Write the graph as PNG, SVG or DOT, chosen by the file's suffix. Intervenable nodes have
    a thick (PNG/SVG) or double (DOT) border."""
    out = Path(out)
    if out.suffix == ".png":
        to_png(model).save(out)
    elif out.suffix == ".svg":
        out.write_text(to_svg(model))
    elif out.suffix in (".dot", ".gv"):
        out.write_text(to_dot(model))
    else:
        raise UsageError(f"--out {out}: expected a .png, .svg or .dot file")
    return out



