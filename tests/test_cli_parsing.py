"""mattecli.cli.parsing and mattecli.sizes: option text -> typed values, one size convention (WIDTHxHEIGHT)."""

import pytest

from mattecli.cli.parsing import parse_backends, parse_memory, parse_shard, parse_size, parse_sizes
from mattecli.errors import UsageError
from mattecli.sizes import Size, aligned_size


@pytest.mark.parametrize("text, value", [("4GB", 4 * 2**30), ("512MB", 512 * 2**20), ("1.5G", int(1.5 * 2**30)),
                                         ("none", None), (None, None), ("2 GiB", 2 * 2**30)])
def test_parse_memory(text, value):
    assert parse_memory(text) == value


@pytest.mark.parametrize("text, value", [("512K", 512 * 1024), ("1KiB", 1024), ("2T", 2 * 2**40), ("1 TiB", 2**40),
                                         ("3MiB", 3 * 2**20), ("100B", 100), ("100", 100)])
def test_every_memory_unit_is_binary(text, value):
    """parse_memory's rule, binary units (1 GB = 2**30), for each prefix: K 2**10, M 2**20, T 2**40; no unit or B is
    bytes (hand computed)."""
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["lots", "4XB", "-1GB", "GB"])
def test_parse_memory_refuses_naming_the_option(text):
    with pytest.raises(UsageError, match=f"^--max-memory '{text}': expected a size"):
        parse_memory(text)


@pytest.mark.parametrize("text", ["", "  "])
def test_an_empty_ceiling_is_refused_not_taken_as_none(text):
    """`--max-memory "$MEM"` with MEM unset lifted the default ceiling (4 GB on a CPU) without a word."""
    with pytest.raises(UsageError, match="^--max-memory: an empty value \\(an unset variable\\?\\); write none for no"):
        parse_memory(text)


@pytest.mark.parametrize("text", ["0", "0GB", "0.0 MB"])
def test_a_zero_ceiling_is_refused_not_taken_as_none(text):
    with pytest.raises(UsageError, match="write none for no ceiling"):
        parse_memory(text)


def test_sizes_are_width_by_height():
    assert parse_sizes("1920x1080, 3840X2160") == [Size(1920, 1080), Size(3840, 2160)]
    # a repeated size was timed twice by bench, where a repeated backend is dropped
    assert parse_sizes("320x240,333x111,320X240") == [Size(320, 240), Size(333, 111)]
    size = parse_size("1920x1080", "--opt-shape")
    assert (size.width, size.height, size.hw, str(size)) == (1920, 1080, (1080, 1920), "1920x1080")
    with pytest.raises(TypeError):  # not a tuple: cannot be unpacked the wrong way round
        _, _ = size


# "1080\u00b2" (a superscript) passed str.isdigit and was int()'s ValueError traceback; other scripts' digits
# were taken as numbers
@pytest.mark.parametrize("bad", ["1920", "1920x", "0x10", "10x0", "axb", "1920x1080x3", "96*160", "", "1920x1080\u00b2",
                                 "\u0661\u0669\u0662\u0660x1080"])
def test_bad_sizes_name_the_option_and_the_convention(bad):
    with pytest.raises(UsageError, match="^--verify-sizes: .*WIDTHxHEIGHT"):
        parse_sizes(bad, "--verify-sizes")
    with pytest.raises(UsageError, match="one WIDTHxHEIGHT"):
        parse_size("32x32,64x64", "--opt-shape")


def test_sizes_align_up_to_the_stride_or_down_for_resize_down_recipes():
    assert aligned_size(1080, 1920, 32) == (1088, 1920) and Size(1920, 1080).aligned(32) == Size(1920, 1088)
    assert Size(1080, 1920).aligned(32) == Size(1088, 1920)  # 1080p written height first
    assert Size(1921, 1080).aligned(32, down=True) == Size(1920, 1056)


def test_resizing_down_needs_each_side_at_least_the_stride():
    """`aligned(stride, down=True)`: a side of exactly the stride stays (32x40 -> 32x32); a side under
    it, either one, is a ValueError naming the size WIDTHxHEIGHT and the stride."""
    assert Size(32, 40).aligned(32, down=True) == Size(32, 32)
    assert Size(40, 32).aligned(32, down=True) == Size(32, 32)
    for small in (Size(16, 40), Size(40, 16)):
        with pytest.raises(ValueError, match=rf"^{small} is under 32 pixels on a side, which a recipe that resizes "):
            small.aligned(32, down=True)
    assert str(Size(16, 40)) == "16x40"


def test_a_size_larger_than_any_readable_image_is_one_line():
    """export --opt-shape 99999999x99999999 and bench --sizes the same were a traceback from the first
    allocation (torch.zeros, numpy) instead of a usage error."""
    from PIL import Image

    most = 2 * Image.MAX_IMAGE_PIXELS
    assert parse_sizes(f"{most}x1") == [Size(most, 1)]
    with pytest.raises(UsageError, match=f"^--sizes: '99999999x99999999' is 9,999,999,800,000,001 pixels, more than "
                                         f"any image matte reads \\({most:,}, Pillow's limit against decompression"):
        parse_sizes("320x240, 99999999x99999999")
    with pytest.raises(UsageError, match="^--opt-shape: '.*' is .* pixels, more than any image matte reads"):
        parse_size(f"{most + 1}x1", "--opt-shape")


def test_shards_and_backends():
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None
    for bad in ("3/3", "-1/3", "a/b", "1", "1/2/3", "1.5/3", "\u00b9/2", "\u0661/2"):
        with pytest.raises(UsageError, match="^--shard .*(0-based|K/N)"):
            parse_shard(bad)
    with pytest.raises(UsageError, match=r"^--shard 3/3: need 0 <= K < N \(K is 0-based: 0/3 \.\. 2/3\)$"):
        parse_shard("3/3")
    for bad in ("1/0", "0/0"):  # the hint said "0/1 .. 0/1"
        with pytest.raises(UsageError, match=f"^--shard {bad}: N, the number of shards, must be at least 1"):
            parse_shard(bad)
    assert parse_backends("torch,onnx,torch") == ["torch", "onnx"]
    with pytest.raises(UsageError, match="unknown backend 'tensorflow'"):
        parse_backends("torch,tensorflow")
    for empty in ("", " , "):  # said "unknown backend '(none)'"
        with pytest.raises(UsageError, match=f"^--backends {empty!r}: names no backend; choose from torch, onnx, trt$"):
            parse_backends(empty)


def test_comma_lists_given_once_or_more_are_one_list():
    from mattecli.cli.parsing import comma_items

    assert comma_items(["alpha, fg", "fg,", "rgba"]) == ["alpha", "fg", "rgba"]
    assert comma_items(["alpha"]) == ["alpha"] and comma_items([" , "]) == []
