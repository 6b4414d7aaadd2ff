"""What weights clipsr knows: `manifest.toml` (name, file, source URL, sha256),
and the bundled checkpoints beside it.  Resolution and caching live in
`clipsr_cli.model.weights`."""

from pathlib import Path

BUNDLED_DIR = Path(__file__).parent
MANIFEST = BUNDLED_DIR / "manifest.toml"
