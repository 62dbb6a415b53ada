"""Sliding-window prediction: Gaussian-weighted windows of the plan's patch size (MONAI), on any volume size."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage
from torch import nn

from activeseg.config import InferenceConfig
from activeseg.data.geometry import Geometry


@torch.inference_mode()
def predict_volume(
    model: nn.Module,
    image_C_D_H_W: npt.NDArray[np.float32],
    roi: tuple[int, int, int],
    inference: InferenceConfig,
    amp: bool = False,
) -> torch.Tensor:
    """Softmax probabilities of a whole planned volume (dropout off): probs_C_D_H_W, float32 on the CPU.

    Windows run on the model's device; the fused volume is kept on the CPU. A volume smaller than the window is
    padded and cropped back by MONAI.
    """
    model.eval()
    device = next(model.parameters()).device

    def softmax(windows: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, enabled=amp):
            logits = model(windows.to(device))
        return torch.softmax(logits.float(), dim=1)

    volume = torch.from_numpy(np.array(image_C_D_H_W, dtype=np.float32))[None]  # a writable copy of the memmap
    fused = sliding_window_inference(
        volume,
        roi_size=roi,
        sw_batch_size=inference.windows_per_batch,
        predictor=softmax,
        overlap=inference.overlap,
        mode="gaussian",
        sw_device=device,
        device=torch.device("cpu"),
    )
    assert isinstance(fused, torch.Tensor)
    return fused[0].float()


def predict_label(
    model: nn.Module,
    image_C_D_H_W: npt.NDArray[np.float32],
    roi: tuple[int, int, int],
    inference: InferenceConfig,
    amp: bool = False,
) -> npt.NDArray[np.uint8]:
    """The predicted label map of a planned volume (argmax of :func:`predict_volume`), with only its largest
    connected foreground region kept when ``inference.largest_component`` says so."""
    label_D_H_W = predict_volume(model, image_C_D_H_W, roi, inference, amp).argmax(dim=0).numpy().astype(np.uint8)
    return largest_component(label_D_H_W) if inference.largest_component else label_D_H_W


def predict_native_label(
    model: nn.Module,
    image_C_D_H_W: npt.NDArray[np.float32],
    geometry: Geometry,
    roi: tuple[int, int, int],
    inference: InferenceConfig,
    amp: bool = False,
) -> npt.NDArray[np.uint8]:
    """The predicted label map on the image's own (native) grid, as nnU-Net exports it: a resampled case has its
    class probabilities interpolated back (linear) and the argmax taken there, not its planned label map copied to
    the nearest native voxels; ``inference.largest_component`` then applies on the native grid. One class at a
    time, so memory is a few native volumes whatever the number of classes. Voxels outside the crop box are
    background."""
    probs_C_D_H_W = predict_volume(model, image_C_D_H_W, roi, inference, amp).numpy()
    if not geometry.resampled:
        label = geometry.to_native(probs_C_D_H_W.argmax(axis=0).astype(np.uint8)[None], label=True)[0]
    else:
        best = geometry.to_native(probs_C_D_H_W[:1], fill=1.0)[0]  # outside the box: certain background
        label = np.zeros(best.shape, dtype=np.uint8)
        for c in range(1, probs_C_D_H_W.shape[0]):
            native_c = geometry.to_native(probs_C_D_H_W[c : c + 1])[0]
            higher = native_c > best
            label[higher], best[higher] = c, native_c[higher]
    return largest_component(label) if inference.largest_component else label


def largest_component(label_D_H_W: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """nnU-Net's postprocessing: foreground outside the largest face-connected region of all foreground classes
    together becomes background; the kept voxels keep their class. (scipy's labelling: MONAI's
    ``KeepLargestConnectedComponent`` would add scikit-image for this alone.)"""
    regions_D_H_W, count = ndimage.label(label_D_H_W > 0)
    if count <= 1:
        return label_D_H_W
    largest = 1 + int(np.argmax(np.bincount(regions_D_H_W.reshape(-1))[1:]))
    return np.where(regions_D_H_W == largest, label_D_H_W, 0).astype(np.uint8)
