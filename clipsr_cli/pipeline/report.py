"""`score --report DIR`: one self-contained HTML page (images inlined as PNG
data URIs), per image LR (nearest) | bicubic | SR | HR with a zoomed crop
of each, the metrics per image, and columns sortable by clicking."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipsr_cli.io.files import atomic_write

THUMB = 200  # displayed width of each panel
ZOOM = 48  # side of the zoomed crop, in HR pixels


def _png(t: torch.Tensor) -> str:
    arr = (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _lr_and_bicubic(hr: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The LR a reference gives at `scale` (bicubic, antialiased), shown enlarged
    by nearest neighbour, and its bicubic upscale: the bar the SR must clear."""
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr[None], size=(max(1, h // scale), max(1, w // scale)), mode="bicubic",
                       antialias=True, align_corners=False).clamp(0, 1)
    return (F.interpolate(lr, size=(h, w), mode="nearest")[0],
            F.interpolate(lr, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1))


def bicubic_of(hr: torch.Tensor, scale: int) -> torch.Tensor:
    return _lr_and_bicubic(hr, scale)[1]


def crop_box(sr: torch.Tensor, bicubic: torch.Tensor | None) -> tuple[int, int, int]:
    """(top, left, side) of the enlarged crop: where the SR differs most from
    bicubic (what the network added), else the centre."""
    h, w = sr.shape[-2:]
    s = min(ZOOM, h, w)
    if bicubic is None or bicubic.shape != sr.shape:
        return (h - s) // 2, (w - s) // 2, s
    diff = (sr - bicubic).abs().mean(dim=0, keepdim=True)[None]
    energy = F.avg_pool2d(diff, s, stride=max(1, s // 4))[0, 0]
    i, j = divmod(int(energy.argmax()), energy.shape[1])
    return i * max(1, s // 4), j * max(1, s // 4), s


def _zoom(t: torch.Tensor, box: tuple[int, int, int]) -> torch.Tensor:
    top, left, s = box
    crop = t[:, top : top + s, left : left + s]
    return F.interpolate(crop[None], size=(THUMB, THUMB), mode="nearest")[0]  # fills its panel


def _thumb(t: torch.Tensor) -> torch.Tensor:
    h, w = t.shape[-2:]
    if w <= THUMB:
        return t
    return F.interpolate(t[None], size=(max(1, round(h * THUMB / w)), THUMB), mode="bilinear",
                         antialias=True, align_corners=False)[0]


def _figure(name: str, panel: torch.Tensor, box, notes: tuple[str, ...] = ()) -> str:
    lines = "".join(f"<br><span class='note'>{html.escape(n)}</span>" for n in notes if n)
    return (f"<figure><img src='{_png(_thumb(panel))}' alt='{html.escape(name)}'>"
            f"<img src='{_png(_zoom(panel, box))}' alt='{html.escape(name)} enlarged'>"
            f"<figcaption>{html.escape(name)}{lines}</figcaption></figure>")


def render_panels(sr: torch.Tensor, hr: torch.Tensor | None, scale: int, box=None,
                  notes: tuple[str, ...] = ()) -> dict:
    """The figures of one output, rendered at once so the run keeps no full-size
    images: {"context": LR | bicubic figures, "sr": its figure, "hr": HR's, "box": the crop}.
    `box`: the crop of an earlier output of the same input (its captions side by
    side show the same place); `notes`: lines under the SR figure (its caption, its scores)."""
    bicubic = None
    figures = {"context": "", "hr": ""}
    if hr is not None:
        lr_view, bicubic = _lr_and_bicubic(hr, scale)
        box = box or crop_box(sr, bicubic)
        figures["context"] = _figure("LR (nearest)", lr_view, box) + _figure("bicubic", bicubic, box)
        figures["hr"] = _figure("HR", hr, box)
    box = box or crop_box(sr, None)
    figures["sr"] = _figure("SR", sr, box, notes)
    figures["box"] = box
    return figures


_SCRIPT = """
document.querySelectorAll('th[data-col]').forEach(th => th.addEventListener('click', () => {
  const table = th.closest('table'), col = +th.dataset.col, asc = th.dataset.asc !== '1';
  th.dataset.asc = asc ? '1' : '0';
  const key = b => { const c = b.rows[0].cells[col], v = c.dataset.v ?? c.textContent; return isNaN(+v) ? v : +v; };
  [...table.tBodies].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1))
    .forEach(b => table.appendChild(b));
}));
"""

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
tbody{border-top:3px solid #999}tr.scores td{background:#fafafa}
th[data-col]{cursor:pointer;background:#f2f2f2}th[data-col]:hover{background:#e2e2e2}
div.panels{display:flex;flex-wrap:wrap;gap:8px 6px}figure{margin:0;text-align:center;width:%dpx}
figcaption{font-size:12px}.note{color:#555}
table.summary{margin-bottom:1em}
img{image-rendering:pixelated;display:block}
""" % THUMB  # panels wrap onto more lines rather than past the window's edge


def input_of(image: str) -> str:
    """The input an output came from: upscale's `_c<i>` (one output per caption) stripped."""
    stem, dot, ext = image.rpartition(".")
    return re.sub(r"_c\d+$", "", stem) + dot + ext if dot else re.sub(r"_c\d+$", "", image)


def write_report(out_dir: Path, rows: list[dict], panels: dict[str, dict], metrics: list, title: str,
                 bicubic: dict[str, dict] | None = None) -> Path:
    """One self-contained page: a summary (each metric's mean, and bicubic's),
    then per input a row of scores and the outputs of its captions side by side,
    each with its caption and scores under it, and enlarged crops where the
    outputs differ most from bicubic.  rows: per-output metric dicts (key
    'image'); panels: image -> render_panels(); bicubic: image -> the same
    metrics of bicubic."""
    bicubic = bicubic or {}
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(input_of(row["image"]), []).append(row)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>", _summary(rows, metrics, bicubic),
             "<p>Click a column header to sort (an input's value: the mean of its outputs). Under each input: "
             "LR (nearest) | bicubic | the SR of each caption, with its caption and scores | HR, each with an "
             "enlarged crop where the SR differs most from bicubic.</p><table><thead><tr>"]
    head = ["image", *[f"{m.name} ({m.direction} is better)" for m in metrics]]
    parts += [f"<th data-col='{i}'>{html.escape(h)}</th>" for i, h in enumerate(head)]
    parts.append("</tr></thead>")
    for name, members in groups.items():
        parts.append(_group(name, members, panels, metrics))
    parts.append(f"</table><script>{_SCRIPT}</script></body></html>")
    page = out_dir / "index.html"
    atomic_write(page, lambda tmp: Path(tmp).write_text("".join(parts), encoding="utf-8"))
    return page


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _summary(rows: list[dict], metrics: list, bicubic: dict[str, dict]) -> str:
    cells = ["<table class='summary'><tr><th></th>", *[f"<th>{html.escape(m.name)}</th>" for m in metrics], "</tr>"]
    for label, source in (("SR (mean)", rows), ("bicubic (mean)", [bicubic[r["image"]] for r in rows
                                                                   if r["image"] in bicubic])):
        if not source:
            continue
        cells.append(f"<tr><th>{label}</th>")
        for m in metrics:
            v = _mean([r[m.name] for r in source if m.name in r])
            cells.append(f"<td>{'-' if v is None else f'{v:.4f}'}</td>")
        cells.append("</tr>")
    return "".join(cells) + "</table>"


def _group(name: str, members: list[dict], panels: dict[str, dict], metrics: list) -> str:
    """One input: a row of its scores (the mean of its outputs), then its panels
    across the table's width, so that its outputs stand side by side."""
    first = panels[members[0]["image"]]
    cells = [f"<td>{html.escape(name)}</td>"]
    for m in metrics:
        v = _mean([r[m.name] for r in members if m.name in r])
        cells.append("<td>-</td>" if v is None else f"<td data-v='{v}'>{v:.4f}</td>")
    figures = first["context"] + "".join(panels[r["image"]]["sr"] for r in members) + first["hr"]
    return (f"<tbody><tr class='scores'>{''.join(cells)}</tr>"
            f"<tr><td colspan='{len(cells)}'><div class='panels'>{figures}</div></td></tr></tbody>")
