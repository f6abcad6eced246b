"""matte: trimap-based deep image matting (IndexNet, A2U, TCP)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """Public names imported on first use, so `import mattecli` stays light (no cv2, no torch)."""
    if name == "trimap_from_mask":
        from mattecli.data.trimap import trimap_from_mask

        return trimap_from_mask
    raise AttributeError(f"module 'mattecli' has no attribute {name!r}")
