"""Cold-start reasoning datasets for VLMs by modality bridging (Vision-R1 style)."""

__version__ = "0.1.0"
