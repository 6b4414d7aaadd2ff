"""clipsr: text-guided image super-resolution (CLIP-SR) as a batch tool."""

__version__ = "0.1.0"
