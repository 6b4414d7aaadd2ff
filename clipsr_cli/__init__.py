"""clipsr: text-guided image super-resolution (CLIP-SR) as a batch tool.

The Python API (`clipsr_cli/api.py`), importable from here:

    import clipsr_cli as clipsr
    model = clipsr.load_model("clipsr-default-x4")
    sr = model.upscale(image, "a red-headed woodpecker")
    clipsr.score(sr, hr, metrics=["psnr", "ssim"], crop_border=4)
"""

__version__ = "0.1.0"

API = ("Model", "load_model", "create_metric", "list_metrics", "score", "score_folders")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    # imported on first use: `clipsr --help` answers without loading torch
    if name in API:
        from clipsr_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'clipsr_cli' has no attribute {name!r}")
