"""Sliding-window prediction: Gaussian-weighted windows of the plan's patch size (MONAI), on any volume size."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from activeseg.config import InferenceConfig


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
    """The predicted label map of a planned volume (argmax of :func:`predict_volume`)."""
    return predict_volume(model, image_C_D_H_W, roi, inference, amp).argmax(dim=0).numpy().astype(np.uint8)
