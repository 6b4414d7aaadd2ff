"""`score --report DIR`: one self-contained HTML page (images inlined as PNG
data URIs), per image LR (nearest) | bicubic | SR | HR with a zoomed crop
of each, the metrics per image, and columns sortable by clicking."""

from __future__ import annotations

import base64
import html
import io
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


def _panels(sr: torch.Tensor, hr: torch.Tensor | None, scale: int) -> list[tuple[str, torch.Tensor]]:
    if hr is None:
        return [("SR", sr)]
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr[None], size=(max(1, h // scale), max(1, w // scale)), mode="bicubic",
                       antialias=True, align_corners=False).clamp(0, 1)
    return [("LR (nearest)", F.interpolate(lr, size=(h, w), mode="nearest")[0]),
            ("bicubic", F.interpolate(lr, size=(h, w), mode="bicubic", align_corners=False)[0]),
            ("SR", sr), ("HR", hr)]


def _zoom(t: torch.Tensor) -> torch.Tensor:
    h, w = t.shape[-2:]
    s = min(ZOOM, h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = t[:, top : top + s, left : left + s]
    return F.interpolate(crop[None], size=(THUMB // 2, THUMB // 2), mode="nearest")[0]


def _thumb(t: torch.Tensor) -> torch.Tensor:
    h, w = t.shape[-2:]
    if w <= THUMB:
        return t
    return F.interpolate(t[None], size=(max(1, round(h * THUMB / w)), THUMB), mode="bilinear",
                         antialias=True, align_corners=False)[0]


_SCRIPT = """
document.querySelectorAll('th[data-col]').forEach(th => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], col = +th.dataset.col, asc = th.dataset.asc !== '1';
  th.dataset.asc = asc ? '1' : '0';
  const key = r => { const v = r.cells[col].dataset.v ?? r.cells[col].textContent; return isNaN(+v) ? v : +v; };
  [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1))
    .forEach(r => body.appendChild(r));
}));
"""

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
th[data-col]{cursor:pointer;background:#f2f2f2}th[data-col]:hover{background:#e2e2e2}
td.panels{white-space:nowrap}figure{display:inline-block;margin:0 4px;text-align:center}figcaption{font-size:12px}
img{image-rendering:pixelated;display:block}
"""


def render_panels(sr: torch.Tensor, hr: torch.Tensor | None, scale: int) -> str:
    """The figures of one image, rendered at once so the run keeps no full-size images."""
    figures = []
    for name, panel in _panels(sr, hr, scale):
        figures.append(f"<figure><img src='{_png(_thumb(panel))}' alt='{html.escape(name)}'>"
                       f"<img src='{_png(_zoom(panel))}' alt='{html.escape(name)} zoom'>"
                       f"<figcaption>{html.escape(name)}</figcaption></figure>")
    return "".join(figures)


def write_report(out_dir: Path, rows: list[dict], panels: dict[str, str], metrics: list, title: str) -> Path:
    """rows: per-image metric dicts (key 'image'); panels: image -> render_panels() HTML."""
    head = ["image", *[f"{m.name} ({m.direction} is better)" for m in metrics]]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p>Click a column header to sort. Panels: LR (nearest) | bicubic | SR | HR, "
             "each with an enlarged centre crop.</p><table><thead><tr>"]
    parts += [f"<th data-col='{i}'>{html.escape(h)}</th>" for i, h in enumerate(head)]
    parts.append("<th>images</th></tr></thead><tbody>")
    for row in rows:
        cells = [f"<td>{html.escape(row['image'])}</td>"]
        cells += [f"<td data-v='{row[m.name]}'>{row[m.name]:.4f}</td>" if m.name in row else "<td>-</td>"
                  for m in metrics]
        cells.append(f"<td class='panels'>{panels[row['image']]}</td>")
        parts.append(f"<tr>{''.join(cells)}</tr>")
    parts.append(f"</tbody></table><script>{_SCRIPT}</script></body></html>")
    page = out_dir / "index.html"
    atomic_write(page, lambda tmp: Path(tmp).write_text("".join(parts), encoding="utf-8"))
    return page
