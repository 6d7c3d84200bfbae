"""Tests for catsdogs.data.transforms: train flips with the configured probability, eval never flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from catsdogs.data.transforms import AUGMENTS, MEAN, STD, Preset, eval_preset, list_augments, train_preset
from catsdogs.errors import UsageError

SIZE = 8


def uint8_batch(count: int, seed: int = 0) -> torch.Tensor:
    """Random NHWC uint8 images; random pixels make every flip visible."""
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8))


def normalised(batch: torch.Tensor) -> torch.Tensor:
    """What a preset should produce without flips, computed independently."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (batch.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def test_eval_output_is_normalised_float_nchw_in_channels_last() -> None:
    batch = uint8_batch(4)
    out = eval_preset(SIZE)(batch)
    assert out.dtype == torch.float32 and out.shape == (4, 3, SIZE, SIZE)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, normalised(batch))


def test_normalisation_uses_imagenet_statistics_per_channel() -> None:
    white = torch.full((1, SIZE, SIZE, 3), 255, dtype=torch.uint8)
    black = torch.zeros((1, SIZE, SIZE, 3), dtype=torch.uint8)
    preset = eval_preset(SIZE)
    white_out, black_out = preset(white)[0, :, 0, 0], preset(black)[0, :, 0, 0]
    torch.testing.assert_close(white_out, torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                                        (1 - 0.406) / 0.225]))
    torch.testing.assert_close(black_out, torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]))


def test_hflip_one_flips_every_image_left_to_right() -> None:
    batch = uint8_batch(6)
    out = train_preset(SIZE, hflip=1.0)(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, normalised(batch.flip(2)))  # NHWC: dim 2 is the width


def test_hflip_zero_never_flips() -> None:
    batch = uint8_batch(6)
    out = train_preset(SIZE, hflip=0.0)(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, normalised(batch))


def test_vflip_one_flips_every_image_upside_down() -> None:
    batch = uint8_batch(6)
    out = train_preset(SIZE, hflip=0.0, vflip=1.0)(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, normalised(batch.flip(1)))


def test_both_flips_at_one_rotate_by_180_degrees() -> None:
    batch = uint8_batch(3)
    out = train_preset(SIZE, hflip=1.0, vflip=1.0)(batch)
    torch.testing.assert_close(out, normalised(batch.flip(1, 2)))


def flipped_mask(out: torch.Tensor, batch: torch.Tensor) -> list[bool]:
    """For each image: True if exactly mirrored, False if exactly unchanged (anything else fails)."""
    plain, mirrored = normalised(batch), normalised(batch.flip(2))
    mask = []
    for index in range(len(batch)):
        is_plain = torch.allclose(out[index], plain[index])
        is_mirrored = torch.allclose(out[index], mirrored[index])
        assert is_plain != is_mirrored, f"image {index} is neither unchanged nor mirrored"
        mask.append(is_mirrored)
    return mask


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_hflip_flips_about_the_configured_fraction(p: float) -> None:
    batch = uint8_batch(800)
    mask = flipped_mask(train_preset(SIZE, hflip=p)(batch, torch.Generator().manual_seed(1)), batch)
    # 800 draws: the standard deviation of the fraction is at most 0.018, so 0.05 is almost 3 of them.
    assert abs(sum(mask) / len(mask) - p) < 0.05


def test_the_same_generator_seed_gives_the_same_flips() -> None:
    batch = uint8_batch(64)
    preset = train_preset(SIZE, hflip=0.5)
    first = flipped_mask(preset(batch, torch.Generator().manual_seed(3)), batch)
    again = flipped_mask(preset(batch, torch.Generator().manual_seed(3)), batch)
    other = flipped_mask(preset(batch, torch.Generator().manual_seed(4)), batch)
    assert first == again
    assert first != other


def test_eval_preset_never_flips_even_when_given_flip_probabilities() -> None:
    batch = uint8_batch(6)
    assert eval_preset(SIZE).hflip == 0.0 and not eval_preset(SIZE).train
    out = Preset(SIZE, hflip=1.0, vflip=1.0, train=False)(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, normalised(batch))


def test_train_preset_defaults_are_the_tutorials() -> None:
    preset = train_preset(224)
    assert (preset.image_size, preset.hflip, preset.vflip, preset.train, preset.augment) == (224, 0.25, 0.0,
                                                                                              True, "flip")


def test_an_unknown_augmentation_lists_the_choices() -> None:
    with pytest.raises(UsageError, match="unknown augmentation 'mixup'; choose one of: .*flip"):
        train_preset(SIZE, augment="mixup")


@pytest.mark.parametrize("name", list_augments())
def test_every_augmentation_keeps_the_batch_shape_and_pixel_range(name: str) -> None:
    torch.manual_seed(0)
    batch = uint8_batch(4, seed=5).permute(0, 3, 1, 2)
    out = AUGMENTS.get(name)(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape
    assert torch.isfinite(out.float()).all()
    assert out.min() >= 0 and out.max() <= 255
    preset_out = train_preset(SIZE, hflip=0.5, augment=name)(uint8_batch(4), torch.Generator().manual_seed(0))
    assert preset_out.shape == (4, 3, SIZE, SIZE) and preset_out.is_contiguous(memory_format=torch.channels_last)


def test_the_flip_augmentation_adds_nothing_to_the_flips() -> None:
    batch = uint8_batch(4).permute(0, 3, 1, 2)
    assert torch.equal(AUGMENTS.get("flip")(batch, None), batch)


def test_crop_cuts_a_window_of_the_reflection_padded_image() -> None:
    batch = uint8_batch(6).permute(0, 3, 1, 2)
    out = AUGMENTS.get("crop")(batch, torch.Generator().manual_seed(0))
    pad = SIZE // 8
    padded = torch.nn.functional.pad(batch.float(), (pad, pad, pad, pad), mode="reflect")
    shifts = set()
    for index in range(len(batch)):
        windows = [(y, x) for y in range(2 * pad + 1) for x in range(2 * pad + 1)
                   if torch.equal(out[index].float(), padded[index, :, y:y + SIZE, x:x + SIZE])]
        assert windows, f"image {index} is not a crop of its padded original"
        shifts.add(windows[0])
    assert len(shifts) > 1  # the offsets are drawn per image


@pytest.mark.parametrize("name", ["crop", "rrc", "rrc-jitter", "trivialaugment", "randaugment"])
def test_generator_driven_augmentations_repeat_with_the_same_seed(name: str) -> None:
    """Every draw comes from the generator given: the global RNG (dropout's, saved apart on resume) neither
    decides the result nor moves."""
    batch = uint8_batch(8).permute(0, 3, 1, 2)
    augment = AUGMENTS.get(name)
    torch.manual_seed(100)
    global_state = torch.get_rng_state()
    first = augment(batch, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), global_state)
    torch.manual_seed(200)
    again = augment(batch, torch.Generator().manual_seed(1))
    other = augment(batch, torch.Generator().manual_seed(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_eval_never_augments() -> None:
    batch = uint8_batch(4)
    out = Preset(SIZE, train=False, augment="rrc-jitter")(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, normalised(batch))


def test_the_input_batch_is_not_modified() -> None:
    batch = uint8_batch(4)
    copy = batch.clone()
    train_preset(SIZE, hflip=1.0, vflip=1.0)(batch)
    assert torch.equal(batch, copy)


@pytest.mark.parametrize("bad", [torch.zeros(2, SIZE, SIZE, 3), torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8),
                                 torch.zeros(SIZE, SIZE, 3, dtype=torch.uint8)],
                         ids=["float", "nchw", "single-image"])
def test_anything_but_a_uint8_nhwc_batch_is_refused(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="expected a uint8 NHWC batch with 3 channels"):
        eval_preset(SIZE)(bad)
