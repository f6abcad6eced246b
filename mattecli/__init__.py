"""matte: trimap-based deep image matting (IndexNet, A2U, TCP)."""

__version__ = "0.1.0"
