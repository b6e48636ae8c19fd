"""Baselines for the WP-UNet comparison: a classic MONAI U-Net of similar depth."""
from __future__ import annotations

from torch import nn


def monai_unet(in_channels: int = 1, out_channels: int = 3, features: tuple[int, ...] = (16, 32, 64, 128),
               dims: int = 3, num_res_units: int = 2) -> nn.Module:
    """MONAI's ``UNet`` with the same channel widths and number of resolution levels as a WP-UNet."""
    from monai.networks.nets import UNet

    features = tuple(int(f) for f in features)
    return UNet(spatial_dims=dims, in_channels=in_channels, out_channels=out_channels, channels=features,
                strides=(2,) * (len(features) - 1), num_res_units=num_res_units, norm="batch")


def model_cost(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """Parameters, non-zero parameters and forward FLOPs (torch.utils.flop_counter) for one input."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(input_shape))
    model.train(was_training)
    return {"parameters": params, "nonzero_parameters": nonzero, "flops": int(counter.get_total_flops())}
