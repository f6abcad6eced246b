"""Image sizes: one type and one convention, so height and width cannot be swapped silently.

People say 1920x1080 for a landscape HD frame, so every size a user writes (`bench --sizes`,
`export --opt-shape`, `--verify-sizes`) and every size matte prints is WIDTHxHEIGHT. Arrays are
indexed the other way round, (height, width); `Size.hw` gives that order where a shape is built.
`Size` is not a tuple, so it cannot be unpacked in the wrong order by accident.
"""

from __future__ import annotations

from dataclasses import dataclass


def aligned_size(h: int, w: int, stride: int) -> tuple[int, int]:
    """(h, w) rounded up to multiples of `stride`, in array order."""
    return -(-h // stride) * stride, -(-w // stride) * stride


@dataclass(frozen=True)
class Size:
    """An image size in pixels; `str(size)` is WIDTHxHEIGHT."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width): the order of an array's shape."""
        return self.height, self.width

    def aligned(self, stride: int, down: bool = False) -> "Size":
        """Rounded up to multiples of `stride` (the model's input size for this image); `down`:
        rounded down, as recipes that align by resizing down (`infer.align: resize-down`) do,
        or a ValueError for a side under `stride`, which such a recipe cannot run."""
        if down:
            if self.width < stride or self.height < stride:
                raise ValueError(f"{self} is under {stride} pixels on a side, which a recipe that resizes its "
                                 "inputs down to the stride cannot run")
            return Size(self.width - self.width % stride, self.height - self.height % stride)
        h, w = aligned_size(self.height, self.width, stride)
        return Size(w, h)
