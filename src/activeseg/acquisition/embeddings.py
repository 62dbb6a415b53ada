"""Per-volume feature vectors for diversity-aware selection, streamed one volume at a time.

- ``bottleneck``: the U-Net's deepest features, averaged over space (core-set, k-means clustering).
- ``gradient``: BADGE's gradient embedding (Ash et al., ICLR 2020): the gradient of the cross-entropy against the
  model's own argmax prediction with respect to the last layer's weights, averaged over voxels.

Both use the deterministic network (dropout off).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers import SkipConnection
from torch import Tensor, nn

from activeseg.acquisition.registry import Embedding


def bottleneck(model: nn.Module) -> nn.Module:
    """The deepest block of a MONAI U-Net: the submodule of its innermost skip connection."""
    skips = [m for m in model.modules() if isinstance(m, SkipConnection)]
    if not skips:
        raise ValueError("model has no skip connection: not a MONAI U-Net")
    inner: nn.Module = skips[-1].submodule
    return inner


def last_layer(model: nn.Module) -> nn.Module:
    """The last convolution in module order (the output layer of a MONAI U-Net)."""
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)]
    if not convolutions:
        raise ValueError("model has no 3D convolution")
    return convolutions[-1]


@torch.no_grad()
def bottleneck_embedding(model: nn.Module, image_C_D_H_W: Tensor) -> np.ndarray:
    """Mean over space of the bottleneck activations: a vector of the deepest channel count."""
    model.eval()
    captured: list[Tensor] = []
    handle = bottleneck(model).register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        model(image_C_D_H_W.unsqueeze(0).to(next(model.parameters()).device))
    finally:
        handle.remove()
    features_1_F_d_h_w = captured[0]
    return features_1_F_d_h_w.float().mean(dim=(0, 2, 3, 4)).cpu().double().numpy()


def gradient_embedding(model: nn.Module, image_C_D_H_W: Tensor) -> np.ndarray:
    """BADGE: d/dW_last of the voxel-mean cross-entropy against the model's own argmax labels, flattened."""
    model.eval()
    weight = last_layer(model).weight
    assert isinstance(weight, Tensor)
    logits_1_C_D_H_W = model(image_C_D_H_W.unsqueeze(0).to(weight.device))
    pseudo_1_D_H_W = logits_1_C_D_H_W.argmax(dim=1).detach()
    loss = F.cross_entropy(logits_1_C_D_H_W, pseudo_1_D_H_W)
    (gradient,) = torch.autograd.grad(loss, [weight])
    return gradient.flatten().cpu().double().numpy()


EMBEDDERS: dict[str, Callable[[nn.Module, Tensor], np.ndarray]] = {
    "bottleneck": bottleneck_embedding,
    "gradient": gradient_embedding,
}


def tiles(image_C_D_H_W: np.ndarray, roi: Sequence[int]) -> Iterator[Tensor]:
    """The volume as windows of ``roi``: padded (zeros, centred, as the sliding window pads) to at least ``roi``,
    then cut into the fewest windows that cover it, the last one on each axis flush with the end."""
    shape = image_C_D_H_W.shape[1:]
    pads = [max(r - s, 0) for r, s in zip(roi, shape, strict=True)]
    padded = np.pad(image_C_D_H_W, [(0, 0), *((p // 2, p - p // 2) for p in pads)])
    starts = []
    for size, r in zip(padded.shape[1:], roi, strict=True):
        count = -(-size // r)
        starts.append(sorted({min(i * r, size - r) for i in range(count)}))
    for d in starts[0]:
        for h in starts[1]:
            for w in starts[2]:
                window = padded[:, d : d + roi[0], h : h + roi[1], w : w + roi[2]]
                yield torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))


def embed_volumes(
    model: nn.Module, volumes: Iterable[tuple[str, np.ndarray]], kind: Embedding, roi: Sequence[int]
) -> Iterator[tuple[str, np.ndarray]]:
    """(case id, embedding) for each volume, one at a time: the mean of its windows' embeddings (see :func:`tiles`),
    so a volume of any size is embedded with the network's own input size."""
    embed = EMBEDDERS[kind]
    for case_id, image_C_D_H_W in volumes:
        vectors = [embed(model, window) for window in tiles(np.asarray(image_C_D_H_W), roi)]
        yield case_id, np.mean(vectors, axis=0)
