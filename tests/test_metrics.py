"""PSNR/SSIM against an independent float64 numpy implementation of BasicSR's
`calculate_psnr` / `calculate_ssim` (test_y_channel=True): Y = 16 + (65.481 R +
128.553 G + 24.966 B) / 255 on uint8 images, cv2.getGaussianKernel(11, 1.5)
window, valid filtering.  The numpy side uses sliding windows, not convolutions."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from typer.testing import CliRunner

from clipsr_cli.cli import app
from clipsr_cli.pipeline.score import pair_folders
from stages.metrics.fullref import psnr, ssim


def _y(u8):
    return u8.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255.0 + 16.0


def _ref_psnr(a, b, border):
    ya, yb = _y(a)[border:-border, border:-border], _y(b)[border:-border, border:-border]
    return 10 * math.log10(255.0**2 / np.mean((ya - yb) ** 2))


def _ref_ssim(a, b, border):
    x, y = _y(a)[border:-border, border:-border], _y(b)[border:-border, border:-border]
    k = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    k /= k.sum()
    win = np.outer(k, k)

    def filt(img):
        return np.einsum("ijkl,kl->ij", sliding_window_view(img, (11, 11)), win)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    return np.mean(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2)))


def _images(seed=3, h=48, w=40):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    noise = rng.normal(0, 12, hr.shape)
    sr = np.clip(hr + noise, 0, 255).round().astype(np.uint8)
    return sr, hr


def _t(u8):
    return torch.from_numpy(u8).permute(2, 0, 1)[None].double() / 255.0


@pytest.mark.parametrize("border", [2, 4])
def test_psnr_ssim_match_independent_reference(border):
    sr, hr = _images()
    assert abs(float(psnr(_t(sr), _t(hr), border)[0]) - _ref_psnr(sr, hr, border)) < 1e-4
    assert abs(float(ssim(_t(sr), _t(hr), border)[0]) - _ref_ssim(sr, hr, border)) < 1e-4


def test_psnr_of_a_constant_offset_is_analytic():
    hr = np.full((20, 20, 3), 100, np.uint8)
    sr = hr + 10  # Y differs by 10 * (65.481 + 128.553 + 24.966) / 255
    dy = 10 * 219.0 / 255.0
    assert abs(float(psnr(_t(sr), _t(hr))[0]) - 20 * math.log10(255.0 / dy)) < 1e-9
    assert float(ssim(_t(hr), _t(hr))[0]) == pytest.approx(1.0)


def test_pairing_uses_names_not_order(tmp_path):
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    (sr / "sub").mkdir(parents=True)
    (hr / "sub").mkdir(parents=True)
    for name in ("zebra.png", "apple.png", "sub/bird.png", "only_hr.png"):
        Image.new("RGB", (8, 8)).save(hr / name)
    for name in ("zebra_x4.png", "apple_x4_c0.png", "apple_x4_c1.png", "sub/bird_x4.jpg", "stray.png"):
        Image.new("RGB", (8, 8)).save(sr / name)
    (sr / "._zebra_x4.png").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata: hidden, not a result
    (hr / ".thumbnails").mkdir()
    Image.new("RGB", (8, 8)).save(hr / ".thumbnails" / "zebra.png")
    p = pair_folders(sr, hr, suffix="_x4")
    pairs = {s.relative_to(sr).as_posix(): h.relative_to(hr).as_posix() for s, h in p.pairs}
    assert pairs == {"zebra_x4.png": "zebra.png", "apple_x4_c0.png": "apple.png",
                     "apple_x4_c1.png": "apple.png", "sub/bird_x4.jpg": "sub/bird.png"}
    assert [x.name for x in p.extra] == ["stray.png"]
    assert [x.name for x in p.missing] == ["only_hr.png"]


def test_score_cli_reports_and_fails_on_size_mismatch(tmp_path):
    sr_dir, hr_dir = tmp_path / "sr", tmp_path / "hr"
    sr_dir.mkdir()
    hr_dir.mkdir()
    sr, hr = _images()
    Image.fromarray(sr).save(sr_dir / "a.png")
    Image.fromarray(hr).save(hr_dir / "a.png")
    Image.fromarray(hr[:40]).save(hr_dir / "b.png")
    Image.fromarray(hr).save(sr_dir / "b.png")
    report = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["score", str(sr_dir), "--ref", str(hr_dir), "--crop-border", "4",
                                   "--json", str(report)])
    assert res.exit_code == 1 and "--crop-to-common" in res.output
    data = json.loads(report.read_text())
    assert [r["image"] for r in data["images"]] == ["a.png"]
    assert data["images"][0]["psnr"] == pytest.approx(_ref_psnr(sr, hr, 4), abs=1e-4)
    res = CliRunner().invoke(app, ["score", str(sr_dir), "--ref", str(hr_dir), "--crop-to-common"])
    assert res.exit_code == 0 and "2 image(s) scored" in res.output
    config = tmp_path / "score.toml"  # the same run with its options in a file
    config.write_text(f'ref = "{hr_dir.as_posix()}"\ncrop_to_common = true\n')
    res = CliRunner().invoke(app, ["score", str(sr_dir), "--config", str(config)])
    assert res.exit_code == 0 and "2 image(s) scored" in res.output, res.output


def test_score_against_the_lr_inputs_says_to_give_the_hr_images(tmp_path):
    sr_dir, lr_dir = tmp_path / "sr", tmp_path / "lr"
    sr_dir.mkdir()
    lr_dir.mkdir()
    Image.new("RGB", (64, 48)).save(sr_dir / "a.png")
    Image.new("RGB", (16, 12)).save(lr_dir / "a.png")
    res = CliRunner().invoke(app, ["score", str(sr_dir), "--ref", str(lr_dir)])
    assert res.exit_code == 1 and "x4 its reference: give the HR images as --ref" in res.output, res.output
    Image.new("RGB", (16, 13)).save(lr_dir / "a.png")  # not a scale apart: the common-area hint
    res = CliRunner().invoke(app, ["score", str(sr_dir), "--ref", str(lr_dir)])
    assert res.exit_code == 1 and "--crop-to-common" in res.output, res.output


def test_niqe_matches_basicsr_documented_value(shared_dir, monkeypatch):
    """BasicSR documents NIQE 5.72957338 (MATLAB R2021a) for its tests/data/baboon.png,
    the Set14 baboon."""
    from clipsr_cli.io.images import load_image
    from stages.metrics.niqe import niqe, pristine_params

    monkeypatch.setenv("CLIPSR_WEIGHTS_DIR", str(shared_dir / "weights"))
    pristine_params.cache_clear()
    img = load_image(shared_dir / "data" / "sr-bench" / "Set14" / "baboon.png").rgb[None]
    assert float(niqe(img)[0]) == pytest.approx(5.72957338, abs=1e-3)
    # x4 bicubic down-and-up loses the fur's texture: clearly worse (higher)
    down = torch.nn.functional.interpolate(img, scale_factor=0.25, mode="bicubic", antialias=True)
    blurred = torch.nn.functional.interpolate(down, scale_factor=4, mode="bicubic").clamp(0, 1)
    assert float(niqe(blurred)[0]) > float(niqe(img)[0]) + 1


def test_imresize_half_matches_matlab_on_a_ramp():
    from stages.metrics.niqe import imresize_half

    # a linear ramp stays linear under MATLAB's antialiased bicubic away from the borders:
    # output pixel i sits at input coordinate 2i + 0.5 (0-based)
    ramp = torch.arange(32, dtype=torch.float64)[None].repeat(32, 1)
    out = imresize_half(ramp)
    assert out.shape == (16, 16)
    assert torch.allclose(out[:, 4:12], (2 * torch.arange(4, 12, dtype=torch.float64) + 0.5)[None].expand(16, -1))


def test_niqe_without_reference_in_cli(shared_dir, tmp_path):
    import shutil

    shutil.copy(shared_dir / "data" / "sr-bench" / "Set5" / "baby.png", tmp_path / "baby.png")
    Image.new("RGB", (50, 50)).save(tmp_path / "small.png")
    res = CliRunner().invoke(app, ["score", str(tmp_path)], env={"CLIPSR_WEIGHTS_DIR": str(shared_dir / "weights")})
    assert res.exit_code == 1 and "niqe" in res.output and "96x96" in res.output


def test_clip_score_is_the_cosine_of_open_clip_embeddings(tiny_clip, tmp_path):
    import torch.nn.functional as F
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from stages.metrics import clip_score as cs

    img = torch.rand(1, 3, 64, 64)  # the tiny CLIP's own input size: preprocessing only normalises
    got = float(cs.clip_score(img, [["a red bird", "a bird on a branch"]], preset="tiny")[0])
    clip, text = cs._towers("tiny")
    mean, std = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    e_img = F.normalize(clip.encode_image((img - mean) / std), dim=-1)[0]
    e_txt = F.normalize(clip.encode_text(text.tokenizer(["a red bird", "a bird on a branch"])), dim=-1)
    assert got == pytest.approx(float((e_txt @ e_img).mean()), abs=1e-6)
    assert -1 <= got <= 1


def test_clip_preprocessing_is_open_clips_own_transform(tiny_clip):
    """Discriminator and CLIP score feed CLIP what open_clip's evaluation transform
    (resize the shorter side, centre crop, normalise) makes of the same picture."""
    import open_clip
    from PIL import Image

    from clipsr_cli.model.clip import clip_preprocess, preprocess_cfg

    y, x = torch.meshgrid(torch.linspace(0, 1, 90), torch.linspace(0, 1, 150), indexing="ij")
    img = torch.stack([x, y, (x * y).sqrt()])[None]  # smooth, so resampling kernels agree closely
    cfg = preprocess_cfg(tiny_clip)
    pil = Image.fromarray((img[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    want = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"])(pil)[None]
    got = clip_preprocess(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)[None] / 255.0, cfg)
    assert got.shape == want.shape == (1, 3, 64, 64)
    assert (got - want).abs().mean() < 0.02


def test_caption_lookup_follows_upscale_names(tmp_path):
    from clipsr_cli.io.captions import CaptionTable
    from clipsr_cli.pipeline.score import caption_lookup

    get = caption_lookup(CaptionTable({"a.png": ["one", "two"], "sub/b.jpg": ["three"]}), tmp_path, "_x4")
    assert get(tmp_path / "a_x4_c1.png") == ["two"]
    assert get(tmp_path / "a_x4.png") == ["one", "two"]
    assert get(tmp_path / "sub" / "b_x4.png") == ["three"]
    assert get(tmp_path / "zzz.png") is None
    # a flat folder scored against a file keyed by the dataset's tree: the one key with that file stem
    get = caption_lookup(CaptionTable({"Set5/baby.png": ["b0", "b1"], "x/dup.png": ["x"], "y/dup.png": ["y"]}),
                         tmp_path, "")
    assert get(tmp_path / "baby_c1.png") == ["b1"] and get(tmp_path / "baby.png") == ["b0", "b1"]
    assert get(tmp_path / "dup.png") is None  # two keys have that stem: neither is guessed


def test_an_image_without_a_caption_keeps_its_other_scores(tmp_path):
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    sr.mkdir(), hr.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(img).save(hr / name)
        Image.fromarray(np.clip(img.astype(int) + 3, 0, 255).astype(np.uint8)).save(sr / name)
    caps = tmp_path / "c.json"
    caps.write_text(json.dumps({"a.png": "a noisy square"}))
    report = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["score", str(sr), "--ref", str(hr), "--metrics", "psnr,clip_score", "--captions",
                                   str(caps), "--clip-preset", "tiny", "--json", str(report)])
    assert res.exit_code == 0, res.output
    assert "no caption:" in res.output and "b.png: clip_score left out for it" in res.output
    rows = {Path(r["image"]).name: r for r in json.loads(report.read_text())["images"]}
    assert set(rows) == {"a.png", "b.png"} and "psnr" in rows["b.png"] and "clip_score" not in rows["b.png"]
    assert "clip_score" in rows["a.png"]


def test_clip_score_offline_is_skipped_with_reason(tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    caps = tmp_path / "c.json"
    caps.write_text(json.dumps({"a.png": "a black square"}))
    res = CliRunner().invoke(app, ["score", str(tmp_path), "--metrics", "clip_score", "--captions", str(caps)])
    assert res.exit_code == 1  # nothing it was asked for could be scored
    assert "skipped clip_score" in res.output and "ViT-B-32-openai.safetensors" in res.output
    res = CliRunner().invoke(app, ["score", str(tmp_path), "--metrics", "clip_score", "--captions", str(caps),
                                   "--clip-preset", "tiny"])
    assert res.exit_code == 0 and "clip_score" in res.output and "1 image(s) scored" in res.output


def test_prefetch_keeps_order_and_returns_errors():
    from clipsr_cli.pipeline.prefetch import prefetch

    def fn(x):
        if x == 3:
            raise ValueError("bad")
        return x * 10

    out = list(prefetch(fn, range(10), depth=2))
    assert [i for i, _ in out] == list(range(10))
    assert isinstance(out[3][1], ValueError)
    assert [r for i, r in out if i != 3] == [i * 10 for i in range(10) if i != 3]


def test_prefetch_with_no_workers_runs_each_item_in_the_caller_when_asked():
    import threading

    from clipsr_cli.pipeline.prefetch import prefetch

    pulled, threads = [], set()

    def items():
        for x in range(5):
            pulled.append(x)
            yield x

    def fn(x):
        threads.add(threading.get_ident())
        if x == 1:
            raise ValueError("bad")
        return x * 10

    out = []
    for i, r in prefetch(fn, items(), depth=4, workers=0):
        assert len(pulled) == i + 1  # nothing decoded ahead of the caller
        out.append(r)
    assert isinstance(out[1], ValueError) and out[:1] + out[2:] == [0, 20, 30, 40]
    assert threads == {threading.get_ident()}


def test_prefetch_runs_as_far_ahead_as_its_depth_says_when_asked():
    from clipsr_cli.pipeline.prefetch import prefetch

    pulled = []

    def items():
        for x in range(100):
            pulled.append(x)
            yield x

    depth = {"n": 4}
    ahead = []
    for i, _ in prefetch(lambda x: x, items(), depth=lambda: depth["n"], workers=1):
        ahead.append(len(pulled) - (i + 1))  # handed to a worker beyond those consumed
        depth["n"] = 20  # e.g. the batch size became known
        if i == 2:
            break
    assert ahead == [4, 20, 20]


def test_report_is_one_self_contained_sortable_page(tmp_path):
    sr_dir, hr_dir, rep = tmp_path / "sr", tmp_path / "hr", tmp_path / "rep"
    sr_dir.mkdir()
    hr_dir.mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        sr, hr = _images(seed)
        Image.fromarray(sr).save(sr_dir / f"{name}.png")
        Image.fromarray(hr).save(hr_dir / f"{name}.png")
    res = CliRunner().invoke(app, ["score", str(sr_dir), "--ref", str(hr_dir), "-s", "4", "--report", str(rep)])
    assert res.exit_code == 0, res.output
    page = (rep / "index.html").read_text()
    main = page.split("<table><thead>", 1)[1]
    assert main.count("<tbody>") == 2 and main.count("<tr class='scores'>") == 2  # one group per image
    assert "data-col='1'" in page and "sort" in page
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) == 2 * 4 * 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http" not in page
    # the summary at the top: the SR's mean and bicubic's, by an independent PSNR
    summary = page.split("<table class='summary'>", 1)[1].split("</table>", 1)[0]
    assert "SR (mean)" in summary and "bicubic (mean)" in summary
    want = np.mean([_ref_psnr(*_images(seed), 4) for seed in (1, 2)])
    assert f"{want:.4f}" in summary


def test_report_shows_an_inputs_captions_side_by_side_cropped_where_they_differ(tmp_path):
    from clipsr_cli.pipeline.report import THUMB, crop_box

    sr_dir, hr_dir, rep, caps = tmp_path / "sr", tmp_path / "hr", tmp_path / "rep", tmp_path / "c.json"
    sr_dir.mkdir()
    hr_dir.mkdir()
    hr = np.full((96, 96, 3), 128, np.uint8)
    Image.fromarray(hr).save(hr_dir / "bird.png")
    for i in range(2):
        sr = hr.copy()
        sr[60:76, 8:24] = 255 * i  # the outputs differ from bicubic in one corner only
        Image.fromarray(sr).save(sr_dir / f"bird_c{i}.png")
    caps.write_text(json.dumps({"bird.png": ["a white bird", "a black bird"]}))
    res = CliRunner().invoke(app, ["score", str(sr_dir), "--ref", str(hr_dir), "-s", "4", "--captions", str(caps),
                                   "--metrics", "psnr", "--report", str(rep)])
    assert res.exit_code == 0, res.output
    page = (rep / "index.html").read_text()
    main = page.split("<tbody>", 1)[1]
    assert main.count("<tr>") == 1 and main.count("alt='SR'") == 2  # one input, its two outputs side by side
    assert "a white bird" in main and "a black bird" in main
    assert main.index("a white bird") < main.index("a black bird")
    sr = torch.from_numpy(np.array(Image.open(sr_dir / "bird_c0.png"))).permute(2, 0, 1).float() / 255
    top, left, side = crop_box(sr, torch.full_like(sr, 128 / 255))
    assert top <= 60 and top + side >= 76 and left <= 8 and left + side >= 24  # the crop holds the difference
    import base64
    import io as _io

    crops = re.findall(r"src='data:image/png;base64,([^']*)' alt='SR enlarged'", page)
    assert len(crops) == 2  # each enlarged crop fills its panel's width
    assert all(Image.open(_io.BytesIO(base64.b64decode(c))).size == (THUMB, THUMB) for c in crops)


# What a person sees: the page laid out by headless Chromium (Debian's `chromium`
# package; the test skips without it).  A script appended to a copy of the page
# measures the layout once it has loaded and leaves the figures in the DOM that
# --dump-dom prints.
_LAYOUT_PROBE = """<script>
const box = e => e.getBoundingClientRect();
const groups = [...document.querySelectorAll('table:not(.summary) tbody')].map(b => {
  const figs = [...b.querySelectorAll('figure')];
  const sr = figs.filter(f => f.querySelector('img').alt === 'SR');
  return {
    rows: new Set(figs.map(f => Math.round(box(f).top))).size,
    crops_fill: figs.every(f => Math.abs(box(f.querySelectorAll('img')[1]).width - box(f).width) < 1),
    notes_under: sr.every(f => box(f.querySelector('figcaption')).top >= box(f.querySelectorAll('img')[1]).bottom),
    notes: sr.map(f => f.querySelector('figcaption').innerText),
  };
});
document.body.dataset.check = JSON.stringify({
  overflow: document.documentElement.scrollWidth > window.innerWidth,
  summary_first: box(document.querySelector('table.summary')).bottom
                 <= box(document.querySelector('table:not(.summary)')).top,
  groups});
</script>"""


def test_report_as_chromium_lays_it_out(tmp_path):
    import html
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless Chromium on this machine (Debian: apt-get install chromium)")
    sr_dir, hr_dir, rep, caps = tmp_path / "sr", tmp_path / "hr", tmp_path / "rep", tmp_path / "c.json"
    sr_dir.mkdir()
    hr_dir.mkdir()
    captions = {}
    for k, name in enumerate(("bird", "boat")):
        sr, hr = _images(seed=k, h=64, w=64)
        Image.fromarray(hr).save(hr_dir / f"{name}.png")
        captions[f"{name}.png"] = [f"a {name} caption {i}" for i in range(3)]
        for i in range(3):
            Image.fromarray(np.roll(sr, i, axis=1)).save(sr_dir / f"{name}_c{i}.png")
    caps.write_text(json.dumps(captions))
    res = CliRunner().invoke(app, ["score", str(sr_dir), "--ref", str(hr_dir), "-s", "4", "--captions", str(caps),
                                   "--metrics", "psnr", "--report", str(rep)])
    assert res.exit_code == 0, res.output
    probe = tmp_path / "probe.html"
    probe.write_text((rep / "index.html").read_text().replace("</body>", _LAYOUT_PROBE + "</body>"))
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000", "--dump-dom",
                           probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'data-check="([^"]*)"', done.stdout)
    assert found, done.stderr[-2000:]
    check = json.loads(html.unescape(found.group(1)))
    assert not check["overflow"] and check["summary_first"]  # nothing past the window's edge; the summary on top
    assert len(check["groups"]) == 2
    for group, name in zip(check["groups"], ("bird", "boat")):
        assert group["rows"] == 1  # LR, bicubic, the three outputs and HR side by side on one line
        assert group["crops_fill"] and group["notes_under"]
        assert [n.split("\n")[1] for n in group["notes"]] == [f"a {name} caption {i}" for i in range(3)]
        assert all(re.search(r"psnr \d+\.\d+", n) for n in group["notes"])  # each output's own score under it


def _lpips_files(tmp_path):
    """Randomly initialised AlexNet and LPIPS lin weights, in the published files' layouts."""
    from torchvision.models import alexnet

    torch.manual_seed(0)
    alex = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(alexnet(weights=None).state_dict(), alex)
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    lin = tmp_path / "LPIPS_v0.1_alex-df73285e.pth"
    torch.save(lins, lin)
    return alex, lin, lins


def test_lpips_loads_both_files_through_the_resolver(tmp_path, monkeypatch):
    from clipsr_cli.model import weights
    from stages.metrics import lpips as lp

    alex, lin, lins = _lpips_files(tmp_path)
    real = weights.manifest()
    patched = {k: v for k, v in real.items()}
    for name, path in (("alexnet-imagenet", alex), ("lpips-alex-lin", lin)):
        patched[name] = weights.WeightsFile(name, path.name, "file:///nowhere", weights.sha256sum(path))
    monkeypatch.setattr(weights, "manifest", lambda path=None: patched)
    lp._model.cache_clear()
    model = lp._model(str(tmp_path))
    lp._model.cache_clear()
    assert all(torch.equal(m.weight, lins[f"lin{i}.model.1.weight"]) for i, m in enumerate(model.lins))
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert torch.allclose(model(x, x), torch.zeros(2), atol=1e-7)
    d = model(x, y)
    assert (d > 0).all() and torch.allclose(d, model(y, x))
    assert torch.allclose(d, _lpips_by_hand(alex, lins, x, y), atol=1e-6)


def _lpips_by_hand(alex_path, lins, x, y):
    """LPIPS v0.1 as Zhang et al. define it, from torchvision's AlexNet alone:
    inputs to [-1, 1] then LPIPS's scaling layer, relu1..relu5, each unit-normalised
    over channels, squared difference weighted by the lin layer, spatial mean, summed."""
    from torchvision.models import alexnet

    net = alexnet(weights=None)
    net.load_state_dict(torch.load(alex_path, weights_only=True))
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    relus = {1, 4, 7, 9, 11}  # the ReLUs after conv1..conv5 in `features`

    def feats(img):
        h, out = ((2 * img - 1) - shift) / scale, []
        for i, layer in enumerate(net.features[:12]):
            h = layer(h)
            if i in relus:
                out.append(h / (h.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    with torch.no_grad():
        return sum((lins[f"lin{i}.model.1.weight"] * (a - b).square()).sum(1).mean(dim=(1, 2))
                   for i, (a, b) in enumerate(zip(feats(x), feats(y))))


def test_lpips_offline_is_skipped_with_reason(tmp_path):
    sr, ref = tmp_path / "sr", tmp_path / "ref"
    sr.mkdir()
    ref.mkdir()
    Image.new("RGB", (40, 40)).save(sr / "a.png")
    Image.new("RGB", (40, 40), "white").save(ref / "a.png")
    report = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["score", str(sr), "--ref", str(ref), "--metrics", "psnr,lpips", "-s", "1",
                                   "--json", str(report)])
    assert res.exit_code == 1  # a metric asked for is missing: the table is not the whole answer
    assert "skipped lpips" in res.output and "alexnet-owt-7be5be79.pth" in res.output
    assert "psnr" in res.output and "unavailable" in res.output  # its row in the table says so
    data = json.loads(report.read_text())
    assert "alexnet-owt-7be5be79.pth" in data["unavailable_metrics"]["lpips"] and "psnr" in data["images"][0]


def test_frechet_distance_matches_the_eigenvalues_of_the_product():
    from stages.metrics.fid import frechet_distance

    rng = np.random.default_rng(0)
    for n_a, n_b, d in ((50, 40, 6), (5, 7, 30)):  # more images than dimensions, and fewer
        a = rng.normal(size=(n_a, d))
        b = rng.normal(size=(n_b, d)) @ rng.normal(size=(d, d)) + 0.5
        ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        # tr((Ca Cb)^1/2) from the eigenvalues of the (non-symmetric) product
        cross = np.sqrt(np.linalg.eigvals(ca @ cb).real.clip(0)).sum()
        mu = a.mean(0) - b.mean(0)
        expected = mu @ mu + np.trace(ca) + np.trace(cb) - 2 * cross
        assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-7)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, a + 2.0) == pytest.approx(d * 4.0, rel=1e-9)  # a pure shift: ||mu||^2
    from stages.metrics.fid import fid

    with pytest.raises(ValueError, match="at least 2 images"):  # no image could be scored: said, not a crash
        fid([], [])
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)


def test_fid_in_score_is_one_value_per_folder(tmp_path, monkeypatch):
    from clipsr_cli.model import weights
    from stages.metrics import fid as fid_mod

    torch.manual_seed(0)
    net_file = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(fid_mod.fid_inception().state_dict(), net_file)
    patched = dict(weights.manifest())
    patched["fid-inception"] = weights.WeightsFile("fid-inception", net_file.name, "file:///nowhere",
                                                   weights.sha256sum(net_file))
    monkeypatch.setattr(weights, "manifest", lambda path=None: patched)
    fid_mod._features.cache_clear()
    sr, ref = tmp_path / "sr", tmp_path / "ref"
    sr.mkdir()
    ref.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(ref / f"{i}.png")
        Image.fromarray(255 - img).save(sr / f"{i}.png")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["score", str(sr), "--ref", str(ref), "--metrics", "psnr,fid",
                                   "--weights-dir", str(tmp_path), "--json", str(out)])
    fid_mod._features.cache_clear()
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    value = data["set_metrics"]["fid"]
    assert value > 0 and "fid" not in data["images"][0] and "psnr" in data["images"][0]
    assert re.search(r"fid\s+│\s+[0-9.]+\s+│\s+-\s+│\s+2", res.output)
    feats = [fid_mod.FIDFeatures(net_file)(load) for load in
             [torch.stack([torch.from_numpy(np.array(Image.open(d / f"{i}.png"))).permute(2, 0, 1).float() / 255
                           for i in range(2)]) for d in (sr, ref)]]
    assert value == pytest.approx(fid_mod.frechet_distance(feats[0].numpy(), feats[1].numpy()), rel=1e-6)


def test_fid_offline_is_skipped_with_reason(tmp_path):
    sr, ref = tmp_path / "sr", tmp_path / "ref"
    for d in (sr, ref):
        d.mkdir()
        for i in range(2):
            Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(d / f"{i}.png")
    res = CliRunner().invoke(app, ["score", str(sr), "--ref", str(ref), "--metrics", "ssim,fid"])
    assert res.exit_code == 1  # ssim scored, fid missing: not the whole answer
    assert "skipped fid" in res.output and "pt_inception-2015-12-05-6726825d.pth" in res.output
