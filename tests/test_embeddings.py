"""Feature vectors for diversity strategies: the U-Net bottleneck, and BADGE's gradient embedding."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from activeseg.acquisition import diversity
from activeseg.acquisition.embeddings import bottleneck, bottleneck_embedding, gradient_embedding, last_layer
from activeseg.config import ModelConfig
from activeseg.engine.model import build_model, network_plan

NETWORK = ModelConfig(channels=(4, 8, 16), strides=(2, 2))


def test_bottleneck_embedding_has_the_deepest_width_and_is_deterministic() -> None:
    torch.manual_seed(0)
    model = build_model(NETWORK, network_plan(NETWORK))
    image = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    vector = bottleneck_embedding(model, image)
    assert vector.shape == (16,)
    np.testing.assert_array_equal(vector, bottleneck_embedding(model, image))  # dropout is off
    captured: list[torch.Tensor] = []
    handle = bottleneck(model).register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model.eval()
        model(image[None])
    handle.remove()
    assert captured[0].shape[1] == 16 and captured[0].shape[2] == 4  # two stride-2 levels: 16 -> 4
    np.testing.assert_allclose(vector, captured[0].double().mean(dim=(0, 2, 3, 4)).numpy(), rtol=1e-6)
    assert not np.allclose(vector, bottleneck_embedding(model, torch.randn(1, 16, 16, 16)))


def test_gradient_embedding_matches_the_closed_form_for_a_pointwise_last_layer() -> None:
    torch.manual_seed(2)
    trunk = nn.Sequential(nn.Conv3d(1, 5, 3, padding=1), nn.ReLU())
    model = nn.Sequential(trunk, nn.Conv3d(5, 3, 1)).double()
    image = torch.randn(1, 4, 5, 3, dtype=torch.float64)
    assert last_layer(model) is model[1]
    got = gradient_embedding(model, image)
    with torch.no_grad():
        features_F_V = trunk(image[None])[0].reshape(5, -1).numpy()
        probs_C_V = torch.softmax(model(image[None]), dim=1)[0].reshape(3, -1).numpy()
    np.testing.assert_allclose(got, diversity.gradient_embedding(probs_C_V, features_F_V), atol=1e-10)
