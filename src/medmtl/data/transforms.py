"""Augmentation presets that move an image, its mask and its boxes together.

Every preset is a torchvision ``transforms.v2`` pipeline, so one random draw (flip, crop, angle)
is applied to the :class:`~torchvision.tv_tensors.Image`, the :class:`~torchvision.tv_tensors.Mask`
and the :class:`~torchvision.tv_tensors.BoundingBoxes` of a sample alike: the mask and the boxes
stay on the lesion whatever the image went through. Masks are resampled with nearest-neighbour
interpolation, so their label set never grows (no 0.5 between 0 and 1), centred on pixel centres
like the image (see :class:`AlignedMask`).

Randomness comes from torch's global generator only, so ``torch.manual_seed`` reproduces a run and
the per-worker seeds that ``DataLoader`` sets give each worker its own stream.

Example:
    >>> import numpy as np
    >>> f = build_transform("s2", train=True, size=64)
    >>> grey, mask = np.zeros((100, 120), np.uint8), np.zeros((100, 120), np.uint8)
    >>> out = f(grey, mask=mask, boxes=np.array([[10.0, 20.0, 60.0, 80.0]]))
    >>> tuple(out["image"].shape), out["mask"].dtype, tuple(out["boxes"].shape)
    ((3, 64, 64), torch.int64, (1, 4))
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from medmtl._registry import Registry

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "PRESETS", "AlignedMask", "JointTransform", "build_transform", "channel_stats",
]

PresetFactory = Callable[[bool, int, int], v2.Compose]

@dataclass(frozen=True)
class PresetInfo:
    """``normalization``: ``"half"`` (x/255 - 0.5) / 0.5 or ``"imagenet"`` mean/std; ``paper``: its source."""

    normalization: str
    paper: str | None = None


PRESETS: Registry[PresetFactory] = Registry("augmentation preset", PresetInfo)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


def channel_stats(stats3: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Per-channel statistics for ``in_chans`` channels from RGB ones.

    A grey input sees the average of the three colour channels, so the mean of the RGB
    statistics is the value that keeps a grey copy of an RGB image on the same scale.
    """
    if in_chans == 3:
        return tuple(stats3)
    return (float(np.mean(stats3)),) * in_chans


def _finish(geometry: list, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Append the steps every preset ends with to its geometric steps.

    Boxes are clamped, never sanitised: ``SanitizeBoundingBoxes`` drops boxes that become
    degenerate, and the detection task pairs each image with exactly one lesion box, so a dropped
    row would silently shift boxes onto the wrong images in a batch. A box pushed fully out of view
    is kept as a zero-width or zero-height row, which the loss can recognise (area 0) and mask.
    """
    return v2.Compose([
        *geometry,
        v2.ClampBoundingBoxes(),
        # A bare dtype converts images only; masks stay integer labels and boxes stay pixels.
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def _resize(size: int) -> v2.Resize:
    # A (size, size) target squashes non-square images instead of cropping them, so no lesion
    # near the border is lost at evaluation time.
    return v2.Resize((size, size))


def _imagenet_pipeline(train: bool, size: int, in_chans: int, train_geometry) -> v2.Compose:
    # The ImageNet-normalised presets differ only in their training geometry (a callable, so
    # evaluation builds none of it); evaluation is a plain resize for all of them.
    mean, std = channel_stats(IMAGENET_MEAN, in_chans), channel_stats(IMAGENET_STD, in_chans)
    return _finish(train_geometry() if train else [_resize(size)], mean, std)


@PRESETS.register("none", normalization="half")
def none_preset(train: bool, size: int, in_chans: int) -> v2.Compose:
    """Resize and scale to [-1, 1]; no randomness in either mode.

    Args:
        train: ignored, both modes are the same pipeline.
        size: output height and width.
        in_chans: number of image channels the pipeline receives.
    """
    return _finish([_resize(size)], channel_stats(HALF, in_chans), channel_stats(HALF, in_chans))


@PRESETS.register("s0", normalization="half", paper="Obonyo & Ruiru, IJCCI 2019, section 3.2")
def s0_preset(train: bool, size: int, in_chans: int) -> v2.Compose:
    """The MTL-vs-TL study's augmentation (Obonyo & Ruiru 2019, section 3.2).

    Resize to ``size`` (the study used 32), random crop with 4 px zero padding, random horizontal
    flip, random rotation, then normalisation with mean = std = 0.5, so pixels lie in [-1, 1].
    The paper gives no angle; 15 degrees is this project's choice. Rotation keeps torchvision's
    default nearest interpolation, which the authors most plausibly used.

    Args:
        train: apply the random steps; ``False`` gives resize and normalisation only.
        size: output height and width.
        in_chans: number of image channels the pipeline receives.
    """
    stats = channel_stats(HALF, in_chans)
    if not train:
        return _finish([_resize(size)], stats, stats)
    return _finish([
        _resize(size),
        v2.RandomCrop(size, padding=4),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(15),
    ], stats, stats)


@PRESETS.register("s2", normalization="imagenet", paper="Mormont, Geurts & Maree, IEEE JBHI 2020, section IV-F")
def s2_preset(train: bool, size: int, in_chans: int) -> v2.Compose:
    """The multi-task pre-training study's augmentation (Mormont et al. 2020, section IV-F).

    Random horizontal and vertical flips, a random square crop resized to ``size``, and ImageNet
    normalisation (the authors found per-task statistics no better). The paper only says "a random
    square crop"; ``RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(1, 1))`` is this project's
    reading, which also crops square images. Grey inputs (``in_chans == 1``) use the mean of the
    ImageNet channel statistics.

    Args:
        train: apply the random steps; ``False`` gives resize and normalisation only.
        size: output height and width.
        in_chans: number of image channels the pipeline receives.
    """
    return _imagenet_pipeline(train, size, in_chans, lambda: [
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(1.0, 1.0)),
    ])


@PRESETS.register("upright", normalization="imagenet")
def upright_preset(train: bool, size: int, in_chans: int) -> v2.Compose:
    """Augmentation for images with a fixed up and down (ultrasound: skin at the top, shadow below).

    A random horizontal flip and a mild random square crop (80-100% of the side), ImageNet
    normalisation. No vertical flip or rotation: both move the depth axis, and on BreastMNIST the
    s2 preset's flips shifted the scores of whole models (the TTA investigation in the README).

    Args:
        train: apply the random steps; ``False`` gives resize and normalisation only.
        size: output height and width.
        in_chans: number of image channels the pipeline receives.
    """
    return _imagenet_pipeline(train, size, in_chans, lambda: [
        v2.RandomHorizontalFlip(),
        v2.RandomResizedCrop(size, scale=(0.64, 1.0), ratio=(1.0, 1.0)),
    ])


class AlignedMask(tv_tensors.Mask):
    """A :class:`~torchvision.tv_tensors.Mask` resized with ``NEAREST_EXACT`` instead of ``NEAREST``.

    torchvision resizes masks with ``NEAREST``, which samples source pixel ``floor(i * scale)``
    while the bilinear image resize is centred on ``(i + 0.5) * scale - 0.5``: every resized mask
    lands about half an output pixel down and right of its image (measured on BUSI: a 12 x 22 px
    lesion resized to 32 px overlaps its own pixels with IoU 0.4). ``NEAREST_EXACT`` samples pixel
    centres, so mask and image stay aligned. Every other operation falls back to the Mask kernels.
    """


def _resize_labels(labels: torch.Tensor, size) -> torch.Tensor:
    plain = labels.as_subclass(torch.Tensor)
    return F.resize_image(plain[None], list(size), interpolation=InterpolationMode.NEAREST_EXACT)[0]


@F.register_kernel(F.resize, AlignedMask)
def _resize_aligned_mask(mask: AlignedMask, size, **_: object) -> AlignedMask:
    return tv_tensors.wrap(_resize_labels(mask, size), like=mask)


@F.register_kernel(F.resized_crop, AlignedMask)
def _resized_crop_aligned_mask(mask: AlignedMask, top: int, left: int, height: int, width: int, size,
                               **_: object) -> AlignedMask:
    cropped = F.crop_mask(mask.as_subclass(torch.Tensor), top, left, height, width)
    return tv_tensors.wrap(_resize_labels(cropped, size), like=mask)


def _as_tensor(array: np.ndarray, dtype=None) -> torch.Tensor:
    # Arrays from np.asarray(PIL image) or np.load(mmap_mode=...) are read-only, and torch warns
    # on (and must not write into) them; np.require copies only when it has to.
    return torch.from_numpy(np.require(array, dtype=dtype, requirements=["C", "W"]))


def _image_to_chw(image: np.ndarray, in_chans: int) -> torch.Tensor:
    """A uint8 (H, W) or (H, W, C) array as a (in_chans, H, W) uint8 tensor."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 array; got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        grey = _as_tensor(image)[None]
        return grey.expand(in_chans, -1, -1).contiguous()
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W) grey or (H, W, C) with C in (1, 3); got shape {image.shape}")
    rgb = _as_tensor(image.transpose(2, 0, 1))
    return F.rgb_to_grayscale(rgb) if in_chans == 1 else rgb


def _mask_to_tensor(mask: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    mask = np.asarray(mask)
    if mask.shape != hw:
        raise ValueError(f"mask must have the image's shape {hw}; got {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != np.bool_:
        raise ValueError(f"mask must hold integer labels; got dtype {mask.dtype}")
    return _as_tensor(mask, np.uint8)


def _boxes_to_tensor(boxes: np.ndarray) -> torch.Tensor:
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.ndim == 1 and boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be a (K, 4) array of x0, y0, x1, y1 pixels; got shape {boxes.shape}")
    return _as_tensor(boxes)


class JointTransform:
    """A preset pipeline bound to numpy inputs; build it with :func:`build_transform`.

    Args:
        preset: a name registered in :data:`PRESETS`.
        train: use the preset's random steps.
        size: output height and width.
        in_chans: output channels, 1 or 3.
        pipeline: the ``v2.Compose`` the preset built.
    """

    def __init__(self, preset: str, train: bool, size: int, in_chans: int, pipeline: v2.Compose):
        self.preset = preset
        self.train = train
        self.size = size
        self.in_chans = in_chans
        self.pipeline = pipeline

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None,
                 boxes: np.ndarray | None = None) -> dict[str, torch.Tensor | None]:
        """Transform one sample.

        Args:
            image: uint8 (H, W) grey or (H, W, C) with C in (1, 3). Grey is repeated to 3 channels
                when ``in_chans == 3``; RGB is reduced to luminance when ``in_chans == 1``.
            mask: uint8 (H, W) label map, or ``None``.
            boxes: float (K, 4) x0, y0, x1, y1 in pixels (K may be 0), or ``None``.

        Returns:
            ``{"image": float32 (in_chans, size, size), "mask": int64 (size, size) or None,
            "boxes": float32 (K, 4) or None}``; boxes keep their K rows (see :func:`_finish`).

        Raises:
            ValueError: an input has the wrong dtype or shape.
        """
        chw = _image_to_chw(image, self.in_chans)
        hw = (int(chw.shape[1]), int(chw.shape[2]))
        sample = {"image": tv_tensors.Image(chw)}
        if mask is not None:
            sample["mask"] = AlignedMask(_mask_to_tensor(mask, hw))
        if boxes is not None:
            sample["boxes"] = tv_tensors.BoundingBoxes(_boxes_to_tensor(boxes), format="XYXY", canvas_size=hw)
        out = self.pipeline(sample)
        # Plain tensors: tv_tensor subclasses would carry canvas metadata into collation and models.
        return {
            "image": out["image"].as_subclass(torch.Tensor),
            "mask": out["mask"].as_subclass(torch.Tensor).long() if mask is not None else None,
            "boxes": out["boxes"].as_subclass(torch.Tensor).float() if boxes is not None else None,
        }

    def __repr__(self) -> str:
        return (f"JointTransform(preset={self.preset!r}, train={self.train}, size={self.size}, "
                f"in_chans={self.in_chans})")


def build_transform(preset: str, *, train: bool, size: int, in_chans: int = 3) -> JointTransform:
    """Build the joint image/mask/boxes transform of a registered preset.

    Args:
        preset: ``"none"``, ``"s0"`` or ``"s2"`` (see ``PRESETS.list()``).
        train: apply the preset's random augmentation; ``False`` gives resize plus the preset's
            normalisation only, which is deterministic.
        size: output height and width in pixels.
        in_chans: output channels, 1 (grey) or 3.

    Returns:
        A callable ``f(image, mask=None, boxes=None) -> dict`` (see :meth:`JointTransform.__call__`).

    Raises:
        KeyError: ``preset`` is not registered; the message lists the registered names.
        ValueError: ``size`` is not a positive integer or ``in_chans`` is not 1 or 3.
    """
    factory = PRESETS.get(preset)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer; got size={size!r}")
    if in_chans not in (1, 3) or isinstance(in_chans, bool):
        raise ValueError(f"in_chans must be 1 or 3; got in_chans={in_chans!r}")
    size = int(size)
    return JointTransform(preset, bool(train), size, int(in_chans), factory(bool(train), size, int(in_chans)))
