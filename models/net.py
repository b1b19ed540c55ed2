"""The compact detector: a dilated temporal convolution network over log-mel frames.

Convolutions have no padding ("valid"), so the network maps T input frames to
T - receptive_field output frames and the streaming wrapper in service/detector.py can
feed it any chunk size. Feature normalisation and the final sigmoid live inside the
exported graph, so the ONNX file takes raw log-mel and returns scores in [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn


class TemporalBlock(nn.Module):
    """Dilated conv + batch norm + ReLU with a residual path cropped to the valid output."""

    def __init__(self, channels: int, dilation: int, kernel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.norm = nn.BatchNorm1d(channels)
        self.shrink = (kernel - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T - shrink)
        return torch.relu(self.norm(self.conv(x))) + x[:, :, self.shrink :]


class CompactTCN(nn.Module):
    """Log-mel (B, T, n_mels) -> logits (B, T - receptive_field, n_classes)."""

    def __init__(
        self,
        n_mels: int = 64,
        n_classes: int = 3,
        channels: int = 32,
        dilations: tuple[int, ...] = (1, 2, 4, 8),
        kernel: int = 3,
    ) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_mels))
        self.register_buffer("feature_std", torch.ones(n_mels))
        self.stem = nn.Conv1d(n_mels, channels, kernel)
        self.stem_norm = nn.BatchNorm1d(channels)
        self.blocks = nn.ModuleList(TemporalBlock(channels, d, kernel) for d in dilations)
        self.head = nn.Conv1d(channels, n_classes, 1)
        self.receptive_field = (kernel - 1) * (1 + sum(dilations))
        self.n_mels, self.n_classes, self.channels = n_mels, n_classes, channels
        self.dilations, self.kernel = dilations, kernel

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = ((logmel - self.feature_mean) / self.feature_std).transpose(1, 2)  # (B, n_mels, T)
        x = torch.relu(self.stem_norm(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x).transpose(1, 2)  # (B, T', n_classes)

    def macs_per_frame(self) -> int:
        """Multiply-accumulates per output frame (convolutions only)."""
        k, c = self.kernel, self.channels
        return self.n_mels * c * k + len(self.dilations) * c * c * k + c * self.n_classes


class ScoresHead(nn.Module):
    """What gets exported: logits -> sigmoid scores."""

    def __init__(self, net: CompactTCN) -> None:
        super().__init__()
        self.net = net

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(logmel))
