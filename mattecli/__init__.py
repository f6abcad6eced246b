"""matte: trimap-based deep image matting (IndexNet, A2U, TCP).

The Python API, a few names (see docs/python-api.md):

    import mattecli
    matter = mattecli.load("indexnet.safetensors", device="auto")   # or an .onnx / .engine file
    alpha = matter.predict(image, trimap)                           # (H, W) uint8
    fg = matter.foreground(image, alpha)                            # (H, W, 3) uint8
    trimap = mattecli.trimap_from_mask(mask, band="1.5%")           # 0/128/255

`import mattecli` stays light: torch, OpenCV and ONNX Runtime are imported when a model is loaded
or a name that needs them is first looked up (trimap_from_mask: OpenCV).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "Matter", "trimap_from_mask"]


def __getattr__(name: str):
    """The public names, imported on first use."""
    if name in ("load", "Matter"):
        from mattecli import api

        return getattr(api, name)
    if name == "trimap_from_mask":
        from mattecli.data.trimap import trimap_from_mask

        return trimap_from_mask
    raise AttributeError(f"module 'mattecli' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy names too: a notebook's `mattecli.<Tab>` (and `dir`) offered none of them."""
    return sorted(set(globals()) | set(__all__))
