"""The training patch schedule: nnU-Net's forced-foreground share, drawn from labelled voxels only."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.acquisition.units import IGNORE, Box
from activeseg.engine.patches import Example, PatchSchedule, augmentation, crop, forced_share

SHAPE = (12, 16, 10)


def partial_example(box: Box, foreground_at: tuple[int, int, int] | None) -> Example:
    """A case labelled only inside ``box`` (background there, one foreground voxel if given), IGNORE elsewhere."""
    label = np.full(SHAPE, IGNORE, dtype=np.uint8)
    label[tuple(slice(a, b) for a, b in box)] = 0
    if foreground_at is not None:
        label[foreground_at] = 2
    return Example(np.zeros((1, *SHAPE), dtype=np.float32), label, boxes=(box,))


@pytest.mark.parametrize(("batch", "share", "forced"), [(2, 0.33, 1), (3, 0.33, 1), (4, 0.33, 1), (6, 0.33, 2)])
def test_forced_share_follows_nnunet(batch: int, share: float, forced: int) -> None:
    assert forced_share(batch, share) == forced


def test_forced_samples_centre_on_labelled_foreground_even_when_most_units_hold_none() -> None:
    # nine cases whose queried unit missed the structure, one whose unit holds a single foreground voxel
    empty = [partial_example(((0, 4), (0, 4), (0, 4)), None) for _ in range(9)]
    hit = partial_example(((6, 10), (8, 12), (2, 6)), (7, 9, 3))
    schedule = PatchSchedule(
        [*empty, hit], (8, 8, 8), batch_size=2, iterations=200, oversample=0.33, seed=5, augment=None
    )
    forced = [schedule.centre(i) for i in range(len(schedule)) if i % 2 == 1]
    assert forced and all(chosen == 9 and centre == (7, 9, 3) for chosen, centre in forced)
    free = [schedule.centre(i) for i in range(len(schedule)) if i % 2 == 0]
    assert {chosen for chosen, _ in free} == set(range(10))  # the rest still draws every labelled case
    for chosen, centre in free:  # ...centred inside its labelled box
        box = schedule.examples[chosen].labelled_boxes()[0]
        assert all(a <= c < b for c, (a, b) in zip(centre, box, strict=True))


def test_without_any_labelled_foreground_every_sample_draws_from_all_cases() -> None:
    examples = [partial_example(((0, 4), (0, 4), (0, 4)), None) for _ in range(4)]
    schedule = PatchSchedule(examples, (8, 8, 8), batch_size=2, iterations=100, oversample=0.5, seed=1, augment=None)
    assert {schedule.centre(i)[0] for i in range(len(schedule))} == set(range(4))


def test_the_schedule_is_a_pure_function_of_seed_and_index() -> None:
    examples = [
        partial_example(((0, 6), (0, 8), (0, 5)), (2, 3, 1)),
        partial_example(((4, 12), (0, 16), (0, 10)), None),
    ]
    a = PatchSchedule(examples, (8, 8, 8), batch_size=3, iterations=20, oversample=0.33, seed=7, augment=None)
    b = PatchSchedule(examples, (8, 8, 8), batch_size=3, iterations=20, oversample=0.33, seed=7, augment=None)
    order = list(reversed(range(len(a))))  # drawn in another order, as workers would
    assert [a.centre(i) for i in range(len(a))] == list(reversed([b.centre(i) for i in order]))


def test_a_patch_larger_than_the_volume_is_padded_with_ignored_labels() -> None:
    example = partial_example(((0, 12), (0, 16), (0, 10)), (0, 0, 0))
    image, label = crop(example, (6, 8, 5), (16, 16, 14))
    assert image.shape == (1, 16, 16, 14) and label.shape == (16, 16, 14)
    assert (label[:2] == IGNORE).all() and (label[-2:] == IGNORE).all() and label[2, 0, 2] == 2
    assert (label[2:14, :, 2:12] != IGNORE).all()


def test_a_patch_of_read_only_memory_mapped_arrays_is_a_writable_copy() -> None:
    example = partial_example(((0, 12), (0, 16), (0, 10)), (1, 1, 1))
    example.image_C_D_H_W.setflags(write=False)
    example.label_D_H_W.setflags(write=False)
    image, label = crop(example, (6, 8, 5), (8, 8, 8))
    assert image.flags.writeable and label.flags.writeable
    assert not np.shares_memory(image, example.image_C_D_H_W)


def test_spatial_augmentation_keeps_image_and_label_aligned_and_ignores_what_it_brings_in() -> None:
    # a fully labelled case with no background: a rotated or scaled patch can only gain IGNORE voxels, never 0
    label = np.ones((40, 40, 40), dtype=np.uint8)
    label[14:26, 14:26, 14:26] = 2
    image = (label == 2).astype(np.float32)[None] * 4.0
    schedule = PatchSchedule(
        [Example(image, label)], (16, 16, 16), 2, 40, 0.0, seed=3, augment=augmentation((), spatial=True)
    )
    plain = PatchSchedule([Example(image, label)], (16, 16, 16), 2, 40, 0.0, seed=3, augment=None)
    moved = 0
    for i in range(len(schedule)):
        patch_image, patch_label = schedule[i]
        assert set(np.unique(patch_label.numpy())) <= {1, 2, IGNORE}
        assert np.array_equal(patch_label.numpy(), schedule[i][1].numpy())  # seeded by the index
        changed = not np.array_equal(patch_label.numpy(), plain[i][1].numpy())
        moved += changed
        if changed and (patch_label == 2).sum() > 50 and (patch_label == 1).sum() > 50:
            inside, outside = patch_image[patch_label == 2].mean(), patch_image[patch_label == 1].mean()
            assert inside - outside > 2.5  # the image moved with its label
    assert 0.2 * len(schedule) < moved < 0.55 * len(schedule)  # about SPATIAL_PROBABILITY (0.36) of the patches


def test_without_spatial_augmentation_labels_come_through_unchanged() -> None:
    example = partial_example(((0, 8), (0, 16), (0, 10)), (3, 4, 5))
    schedule = PatchSchedule([example], (8, 8, 8), 2, 20, 0.5, seed=0, augment=augmentation(()))
    for i in range(len(schedule)):
        _, centre = schedule.centre(i)
        assert np.array_equal(schedule[i][1].numpy()[0], crop(example, centre, (8, 8, 8))[1])
