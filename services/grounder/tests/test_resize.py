import pytest

from selfagent.errors import ResizeError
from selfagent.grounder.resize import fit_within, smart_resize


def test_qwen25_defaults_full_hd() -> None:
    assert smart_resize(1080, 1920) == (1092, 1932)


def test_budget_of_holo_and_qwen_small() -> None:
    assert smart_resize(1080, 1920, max_pixels=1003520) == (728, 1316)


def test_720p_on_the_28_grid() -> None:
    assert smart_resize(720, 1280) == (728, 1288)


def test_qwen3_factor_32() -> None:
    h, w = smart_resize(720, 1280, factor=32)
    assert (h, w) == (704, 1280)
    assert h % 32 == 0 and w % 32 == 0


def test_tiny_image_grows_to_min_pixels() -> None:
    h, w = smart_resize(20, 30, min_pixels=56 * 56)
    assert h * w >= 56 * 56
    assert h % 28 == 0 and w % 28 == 0


def test_result_always_within_budget() -> None:
    for height, width in [(4000, 6000), (2160, 3840), (100, 9000), (777, 1333)]:
        h, w = smart_resize(height, width, max_pixels=1003520)
        assert h * w <= 1003520
        assert h % 28 == 0 and w % 28 == 0


def test_extreme_aspect_ratio_raises() -> None:
    with pytest.raises(ResizeError, match="aspect ratio"):
        smart_resize(10, 2010)


def test_non_positive_size_raises() -> None:
    with pytest.raises(ResizeError):
        smart_resize(0, 100)


def test_fit_within_only_shrinks() -> None:
    assert fit_within(1280, 720, 2_000_000) == (1280, 720)
    w, h = fit_within(3840, 2160, 1280 * 720)
    assert w * h <= 1280 * 720
    assert abs(w / h - 16 / 9) < 0.01
