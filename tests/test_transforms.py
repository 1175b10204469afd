"""Joint augmentation presets: shapes, joint geometry, normalisation and reproducibility."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medmtl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PRESETS, build_transform

H, W = 96, 128  # non-square, so a swapped (H, W) canvas would show
SQUARE = (20, 30, 60, 80)  # rows 20..59, cols 30..79: in view of most s2 crops, not all


def test_registered_presets_are_pinned():
    assert sorted(PRESETS) == ["none", "s0", "s2", "upright"]


def test_unknown_preset_lists_the_registered_names():
    match = r"'s1' is not a registered augmentation preset; choose one of \['none', 's0', 's2', 'upright'\]"
    with pytest.raises(KeyError, match=match):
        build_transform("s1", train=True, size=32)


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 0}, r"size must be a positive integer; got size=0"),
    ({"size": 32, "in_chans": 2}, r"in_chans must be 1 or 3; got in_chans=2"),
])
def test_bad_size_or_channels_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_transform("s0", train=False, **kwargs)


def test_bad_inputs_are_refused():
    f = build_transform("none", train=False, size=16)
    with pytest.raises(ValueError, match=r"image must be a uint8 array; got dtype float32"):
        f(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match=r"image must be \(H, W\) grey or \(H, W, C\) .*; got shape \(8, 8, 4\)"):
        f(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match=r"mask must have the image's shape \(8, 8\); got \(8, 9\)"):
        f(np.zeros((8, 8), np.uint8), mask=np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match=r"boxes must be a \(K, 4\) array .*; got shape \(2, 3\)"):
        f(np.zeros((8, 8), np.uint8), boxes=np.zeros((2, 3)))


def square_sample(h: int = H, w: int = W, box=SQUARE, value: int = 255):
    """A dark image whose bright rectangle is exactly the mask and exactly the box."""
    r0, c0, r1, c1 = box
    image = np.zeros((h, w), np.uint8)
    image[r0:r1, c0:c1] = value
    mask = (image > 0).astype(np.uint8)
    boxes = np.array([[c0, r0, c1, r1]], np.float32)  # x0, y0, x1, y1 on pixel edges
    return image, mask, boxes


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("colour", [False, True])
def test_output_shapes_and_dtypes(preset, train, in_chans, colour):
    image, mask, boxes = square_sample()
    if colour:
        image = np.stack([image, image // 2, image // 3], axis=-1)
    f = build_transform(preset, train=train, size=32, in_chans=in_chans)
    out = f(image, mask=mask, boxes=np.concatenate([boxes, boxes + 1]))
    assert out["image"].shape == (in_chans, 32, 32) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (32, 32) and out["mask"].dtype == torch.int64
    assert out["boxes"].shape == (2, 4) and out["boxes"].dtype == torch.float32
    assert type(out["image"]) is torch.Tensor and type(out["mask"]) is torch.Tensor
    assert torch.isfinite(out["image"]).all()


def test_mask_and_boxes_are_optional_and_empty_boxes_allowed():
    f = build_transform("s2", train=True, size=24)
    image = np.full((40, 50, 1), 7, np.uint8)
    out = f(image)
    assert out["image"].shape == (3, 24, 24) and out["mask"] is None and out["boxes"] is None
    out = f(image, boxes=np.zeros((0, 4)))
    assert out["boxes"].shape == (0, 4) and out["mask"] is None


def test_grey_is_repeated_to_three_channels():
    image, _, _ = square_sample()
    out = build_transform("none", train=False, size=32)(image)["image"]
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_rgb_is_reduced_to_luminance_for_one_channel():
    red, green = np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)
    red[..., 0], green[..., 1] = 200, 200
    f = build_transform("none", train=False, size=16, in_chans=1)
    expected = [(np.floor(200 * w) / 255 - 0.5) / 0.5 for w in (0.2989, 0.587)]  # ITU-R 601 weights
    assert f(red)["image"].mean().item() == pytest.approx(expected[0], abs=0.01)
    assert f(green)["image"].mean().item() == pytest.approx(expected[1], abs=0.01)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 1.0


def foreground_bounds(mask: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)


@pytest.mark.parametrize("seed", range(12))
def test_s2_moves_image_mask_and_box_together(seed):
    image, mask, boxes = square_sample()
    torch.manual_seed(seed)
    out = build_transform("s2", train=True, size=64)(image, mask=mask, boxes=boxes)
    bright = out["image"][0] > 0  # the dark background normalises to about -2.1, the square to +2.2
    assert set(out["mask"].unique().tolist()) <= {0, 1}
    assert iou(out["mask"].bool(), bright) > 0.9
    box = out["boxes"][0]
    if out["mask"].any():
        assert torch.allclose(box, foreground_bounds(out["mask"]), atol=2.0)
    else:  # cropped out of view: the row is kept, clamped to zero area (never dropped)
        assert (box[2] - box[0]) * (box[3] - box[1]) <= 1.0
    assert box.min() >= 0 and box[[0, 2]].max() <= 64 and box[[1, 3]].max() <= 64


def test_s2_draws_flip_the_square_to_both_sides():
    # A square in the top-left quadrant must sometimes land in each quadrant once flips apply.
    image, mask, boxes = square_sample(box=(5, 5, 35, 45))
    centres = set()
    for seed in range(40):
        torch.manual_seed(seed)
        out = build_transform("s2", train=True, size=64)(image, mask=mask, boxes=boxes)
        x0, y0, x1, y1 = out["boxes"][0].tolist()
        centres.add(((x0 + x1) / 2 > 32, (y0 + y1) / 2 > 32))
    assert centres == {(False, False), (False, True), (True, False), (True, True)}


@pytest.mark.parametrize("seed", range(8))
def test_s0_rotation_and_padded_crop_keep_mask_on_image_and_box_around_it(seed):
    image, mask, boxes = square_sample(box=(24, 32, 72, 96))
    torch.manual_seed(seed)
    out = build_transform("s0", train=True, size=64)(image, mask=mask, boxes=boxes)
    bright = out["image"][0] > 0
    assert iou(out["mask"].bool(), bright) > 0.9
    # A rotated box is the axis-aligned hull of the rotated corners: it encloses, not hugs, the mask.
    box, tight = out["boxes"][0], foreground_bounds(out["mask"])
    assert (box[:2] <= tight[:2] + 2).all() and (box[2:] >= tight[2:] - 2).all()


def test_a_box_pushed_out_of_view_is_clamped_not_dropped():
    # A 4-px box at the very corner is outside every 50%-area centre-biased crop sometimes; across
    # seeds at least one draw must lose it and still return one row.
    image, mask, boxes = square_sample(box=(0, 0, 4, 4))
    lost = 0
    for seed in range(30):
        torch.manual_seed(seed)
        out = build_transform("s2", train=True, size=32)(image, mask=mask, boxes=boxes)
        assert out["boxes"].shape == (1, 4)
        x0, y0, x1, y1 = out["boxes"][0].tolist()
        assert 0 <= x0 <= x1 <= 32 and 0 <= y0 <= y1 <= 32
        lost += (x1 - x0) * (y1 - y0) == 0
    assert lost > 0


@pytest.mark.parametrize("size", [32, 45, 100])
def test_resized_mask_is_centred_on_its_pixels_not_shifted_half_a_pixel(size):
    # torchvision's NEAREST mask resize lands ~0.5 px down-right of the bilinear image resize;
    # the preset's masks must not (compare centroids of the mask and of the image intensity).
    image, mask, _ = square_sample(box=(21, 33, 47, 71))
    out = build_transform("none", train=False, size=size)(image, mask=mask)
    weight = (out["image"][0] + 1) / 2
    grid_r, grid_c = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image_centre = torch.stack([(weight * grid_r).sum(), (weight * grid_c).sum()]) / weight.sum()
    rows, cols = torch.nonzero(out["mask"], as_tuple=True)
    mask_centre = torch.stack([rows.float().mean(), cols.float().mean()])
    assert torch.allclose(mask_centre, image_centre, atol=0.25)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_eval_mode_is_deterministic_and_is_resize_plus_normalisation(preset):
    image, mask, boxes = square_sample()
    f = build_transform(preset, train=False, size=32)
    torch.manual_seed(0)
    first = f(image, mask=mask, boxes=boxes)
    torch.manual_seed(1)
    second = f(image, mask=mask, boxes=boxes)
    for key in ("image", "mask", "boxes"):
        assert torch.equal(first[key], second[key])
    sx, sy = 32 / W, 32 / H
    expected = torch.tensor([[30 * sx, 20 * sy, 80 * sx, 60 * sy]])
    assert torch.allclose(first["boxes"], expected, atol=1e-4)


@pytest.mark.parametrize("preset", ["s0", "s2"])
def test_train_mode_varies_across_seeds_and_replays_under_manual_seed(preset):
    image, mask, boxes = square_sample()
    f = build_transform(preset, train=True, size=32)
    outputs = []
    for seed in (0, 1, 2, 3, 0):
        torch.manual_seed(seed)
        outputs.append(f(image, mask=mask, boxes=boxes))
    for key in ("image", "mask", "boxes"):
        assert torch.equal(outputs[0][key], outputs[4][key])
    assert len({tuple(o["boxes"][0].tolist()) for o in outputs[:4]}) > 1


def test_none_preset_ignores_train():
    image, mask, boxes = square_sample()
    a = build_transform("none", train=True, size=32)(image, mask=mask, boxes=boxes)
    b = build_transform("none", train=False, size=32)(image, mask=mask, boxes=boxes)
    assert all(torch.equal(a[k], b[k]) for k in ("image", "mask", "boxes"))


@pytest.mark.parametrize("preset", ["s0", "none"])
@pytest.mark.parametrize("train", [True, False])
def test_half_normalisation_maps_pixels_into_minus_one_to_one(preset, train):
    image = np.tile(np.arange(256, dtype=np.uint8), (16, 1))  # every grey level
    torch.manual_seed(0)
    out = build_transform(preset, train=train, size=32)(image)["image"]
    assert out.min() >= -1.0 and out.max() <= 1.0
    if not train:  # a random crop may cut off either end of the ramp
        assert out.min() == pytest.approx(-1.0, abs=0.05) and out.max() == pytest.approx(1.0, abs=0.05)


def test_s2_uses_imagenet_statistics():
    level = round(IMAGENET_MEAN[0] * 255)
    out = build_transform("s2", train=False, size=16)(np.full((20, 20), level, np.uint8))["image"]
    assert out[0].abs().max() < 0.01  # the ImageNet red mean maps to 0
    expected_blue = (level / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    assert torch.allclose(out[2], torch.full((16, 16), expected_blue), atol=1e-4)


def test_s2_grey_uses_mean_of_imagenet_statistics():
    mean, std = np.mean(IMAGENET_MEAN), np.mean(IMAGENET_STD)
    out = build_transform("s2", train=False, size=16, in_chans=1)(np.full((20, 20), 200, np.uint8))["image"]
    assert torch.allclose(out, torch.full((1, 16, 16), (200 / 255 - mean) / std), atol=1e-4)


BUSI = Path(os.environ.get("MEDMTL_DATA", "../shared/datasets")) / "busi" / "benign"


@pytest.fixture(scope="module")
def busi_sample():
    image_path, mask_path = BUSI / "benign (1).png", BUSI / "benign (1)_mask.png"
    if not (image_path.is_file() and mask_path.is_file()):
        pytest.skip(f"BUSI fixture not found at {image_path} (set MEDMTL_DATA to the datasets folder)")
    from medmtl.data.records import FileSource

    image = FileSource(image_path).load()
    mask = FileSource(mask_path).load()
    mask = (mask if mask.ndim == 2 else mask[..., 0]) > 127  # BUSI masks are stored as 0/255
    return image, mask.astype(np.uint8)


def test_busi_eval_resize_keeps_the_lesion_fraction(busi_sample):
    image, mask = busi_sample
    out = build_transform("s2", train=False, size=128)(image, mask=mask)
    assert set(out["mask"].unique().tolist()) == {0, 1}
    assert out["mask"].float().mean().item() == pytest.approx(mask.mean(), rel=0.05)


@pytest.mark.parametrize("seed", range(5))
def test_busi_s2_mask_stays_binary_and_on_the_lesion(busi_sample, seed):
    image, mask = busi_sample
    f = build_transform("s2", train=True, size=160)
    torch.manual_seed(seed)
    out = f(image, mask=mask)
    fraction, before = out["mask"].float().mean().item(), float(mask.mean())
    assert set(out["mask"].unique().tolist()) <= {0, 1} and fraction > 0
    # A crop keeps >= 50% of the area, so the lesion's share can at most double (plus rounding).
    assert fraction <= 2 * before * 1.1
    # Replay the same draw on the mask painted as the image: the geometry the image went
    # through is then visible, and the transformed mask must sit on it.
    torch.manual_seed(seed)
    painted = f(mask * 255)["image"][0] > 0
    assert iou(out["mask"].bool(), painted) > 0.9


def test_upright_keeps_up_and_down_but_flips_left_and_right():
    # Top half bright, left quarter of the bottom half grey: a vertical flip or a rotation would
    # put bright rows at the bottom; a horizontal flip moves the grey block to the right.
    image = np.zeros((64, 64), dtype=np.uint8)
    image[:32] = 255
    image[32:, :16] = 128
    f = build_transform("upright", train=True, size=32, in_chans=1)
    torch.manual_seed(0)
    flipped = 0
    for _ in range(40):
        x = f(image)["image"][0]
        assert x[:8].mean() > x[-8:].mean() + 1.0  # the bright top stays on top
        bottom = x[24:]
        flipped += bool(bottom[:, -4:].mean() > bottom[:, :4].mean())
    assert 5 < flipped < 35  # left-right flips happen, about half the time
