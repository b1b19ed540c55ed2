"""The compact detector: a dilated temporal convolution network over log-mel frames.

Convolutions have no padding ("valid"), so the network maps T input frames to
T - receptive_field output frames and the streaming wrapper in service/detector.py can
feed it any chunk size. Feature normalisation and the final sigmoid live inside the
exported graph, so the ONNX file takes raw log-mel and returns scores in [0, 1].
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

#: Frames averaged before a band's floor is taken (100 ms): the minimum of single frames
#: sits at the bottom of the background's frame-to-frame fluctuation, not at its level.
FLOOR_SMOOTH_FRAMES = 5


def over_floor(x: torch.Tensor, floor_frames: int) -> torch.Tensor:
    """Each band's level over its own background floor, (B, F, T) -> (B, F, T - shrink):
    the frame minus the lowest 100-ms mean of the band in the `floor_frames` frames up to
    it (causal minimum statistics, the noise-floor estimate of speech enhancement). An
    event over a steady bed reads the same over any bed level; the minimum, unlike a running
    mean, is not raised by the event itself until it has lasted the whole window."""
    smooth = F.avg_pool1d(x, FLOOR_SMOOTH_FRAMES, stride=1)
    floor = -F.max_pool1d(-smooth, floor_frames, stride=1)
    return x[:, :, x.shape[-1] - floor.shape[-1] :] - floor


def floor_shrink(floor_frames: int) -> int:
    """Frames `over_floor` takes from the start of its input (0 when it is off)."""
    return FLOOR_SMOOTH_FRAMES - 1 + floor_frames - 1 if floor_frames else 0


#: Per-channel energy normalisation's constants (Wang et al. 2017, "Trainable frontend for
#: robust and far-field keyword spotting"; librosa's defaults): the gain exponent, the bias,
#: the root, and a floor under the smoothed level. Fixed, not learnt: one difference a run.
PCEN_GAIN, PCEN_BIAS, PCEN_ROOT, PCEN_EPS = 0.98, 2.0, 0.5, 1e-6


def pcen_weights(frames: int) -> torch.Tensor:
    """The causal smoother's weights over the last `frames` frames, oldest first: an
    exponential decay with a time constant of half the window, cut there and normalised.
    A finite window (a valid convolution) rather than PCEN's usual recursive filter, so a
    stream fed in chunks of any length scores as one pass, as every other layer does."""
    ages = torch.arange(frames - 1, -1, -1, dtype=torch.float32)
    weights = torch.exp(-ages / (frames / 2))
    return weights / weights.sum()


def pcen(logmel: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-channel energy normalisation of raw log-mel power, (B, F, T) -> (B, F, T - shrink):
    each band's magnitude divided by (nearly) its own smoothed recent level, then compressed
    by a root. A steady bed of any level reads about the same small value; a sound rising
    over it reads its ratio over the bed. `kernel` is (F, 1, frames) of `pcen_weights`."""
    magnitude = torch.exp(0.5 * logmel)  # librosa applies PCEN to magnitudes, not power
    smooth = F.conv1d(magnitude, kernel, groups=kernel.shape[0])
    now = magnitude[:, :, magnitude.shape[-1] - smooth.shape[-1] :]
    gained = now / (PCEN_EPS + smooth) ** PCEN_GAIN
    return (gained + PCEN_BIAS) ** PCEN_ROOT - PCEN_BIAS**PCEN_ROOT


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


class SeparableFreqConv(nn.Module):
    """Depthwise 3x3 over (mel, time) then pointwise, halving the mel axis: a cheap way to
    see spectral shapes (the harmonics of a cry, the narrow line of a piezo, the broadband
    burst of glass). Time is not padded (valid), so the block shortens time by 2 frames."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, (3, 3), stride=(2, 1), padding=(1, 0), groups=c_in)
        self.pointwise = nn.Conv2d(c_in, c_out, 1)
        self.norm = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F, T) -> (B, C', F/2, T-2)
        return torch.relu(self.norm(self.pointwise(self.depthwise(x))))


class FreqConvTCN(nn.Module):
    """Log-mel (B, T, n_mels) -> logits (B, T - receptive_field, n_classes).

    A 2-D front end over (mel, time) — one full 3x3 convolution and depthwise-separable
    blocks, each halving the mel axis — then the dilated temporal convolutions of
    CompactTCN on the flattened (channels x remaining mel bands). Every convolution is
    valid in time and the network has no time-global operation, so streaming windows of
    any length give the same scores as one pass, and look-ahead is only an alignment
    choice (output frame j belongs to input frame j + receptive_field - lookahead).
    """

    def __init__(
        self,
        n_mels: int = 64,
        n_classes: int = 3,
        freq_channels: tuple[int, ...] = (12, 24, 32, 32),
        channels: int = 56,
        dilations: tuple[int, ...] = (1, 2, 4, 8, 16),
        kernel: int = 3,
        floor_frames: int = 0,
        pcen_frames: int = 0,
    ) -> None:
        super().__init__()
        if floor_frames < 0 or floor_frames == 1:
            raise ValueError(f"net.floor_frames must be 0 (off) or at least 2 frames, got {floor_frames}")
        if pcen_frames < 0 or pcen_frames == 1:
            raise ValueError(f"net.pcen_frames must be 0 (off) or at least 2 frames, got {pcen_frames}")
        self.register_buffer("feature_mean", torch.zeros(n_mels))
        self.register_buffer("feature_std", torch.ones(n_mels))
        # With floor_frames, a second input plane: each band over its own recent floor.
        self.floor_frames = floor_frames
        # With pcen_frames, another: each band's per-channel energy normalisation (`pcen`),
        # itself normalised per band by statistics of training scenes (`set_pcen_statistics`).
        self.pcen_frames = pcen_frames
        if pcen_frames:
            self.register_buffer("pcen_kernel", pcen_weights(pcen_frames).expand(n_mels, 1, pcen_frames).clone())
            self.register_buffer("pcen_mean", torch.zeros(n_mels))
            self.register_buffer("pcen_std", torch.ones(n_mels))
        self.shrink_before_stem = max(floor_shrink(floor_frames), pcen_frames - 1 if pcen_frames else 0)
        planes = 1 + bool(floor_frames) + bool(pcen_frames)
        self.stem = nn.Conv2d(planes, freq_channels[0], (3, 3), stride=(2, 1), padding=(1, 0))
        self.stem_norm = nn.BatchNorm2d(freq_channels[0])
        self.freq_blocks = nn.ModuleList(
            SeparableFreqConv(a, b) for a, b in itertools.pairwise(freq_channels)
        )
        bands = n_mels
        for _ in freq_channels:
            bands = (bands + 1) // 2
        self.bands_out = bands
        self.project = nn.Conv1d(freq_channels[-1] * bands, channels, 1)
        self.project_norm = nn.BatchNorm1d(channels)
        self.blocks = nn.ModuleList(TemporalBlock(channels, d, kernel) for d in dilations)
        self.head = nn.Conv1d(channels, n_classes, 1)
        self.receptive_field = 2 * len(freq_channels) + (kernel - 1) * sum(dilations) + self.shrink_before_stem
        self.n_mels, self.n_classes, self.channels = n_mels, n_classes, channels
        self.freq_channels, self.dilations, self.kernel = freq_channels, dilations, kernel

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(logmel)).transpose(1, 2)

    def features(self, logmel: torch.Tensor) -> torch.Tensor:
        """The temporal features the head reads, (B, channels, T'): a teacher head reads them too."""
        x = torch.relu(self.stem_norm(self.stem(self.planes(logmel))))
        for block in self.freq_blocks:
            x = block(x)
        b, c, f, t = x.shape
        x = torch.relu(self.project_norm(self.project(x.reshape(b, c * f, t))))  # (B, channels, T')
        for block in self.blocks:
            x = block(x)
        return x

    def planes(self, logmel: torch.Tensor) -> torch.Tensor:
        """The stem's input, (B, planes, F, T - shrink_before_stem): the normalised log-mel,
        then each band over its floor and its energy normalisation where the recipe asks."""
        x = ((logmel - self.feature_mean) / self.feature_std).transpose(1, 2)  # (B, F, T)
        start = self.shrink_before_stem
        planes = [x[:, :, start:]]
        if self.floor_frames:  # in normalised units: the mean cancels, the per-band scale stays
            over = over_floor(x, self.floor_frames)
            planes.append(over[:, :, over.shape[-1] - planes[0].shape[-1] :])
        if self.pcen_frames:
            normalised = self.pcen_plane(logmel)
            planes.append(normalised[:, :, normalised.shape[-1] - planes[0].shape[-1] :])
        return torch.stack(planes, dim=1)

    def pcen_plane(self, logmel: torch.Tensor) -> torch.Tensor:
        """`pcen` of the raw log-mel (B, T, F), per band in the units of its training statistics."""
        energy_normalised = pcen(logmel.transpose(1, 2), self.pcen_kernel)
        return (energy_normalised - self.pcen_mean[:, None]) / self.pcen_std[:, None]

    @torch.no_grad()
    def set_pcen_statistics(self, logmel: torch.Tensor) -> None:
        """Each band's mean and spread of the `pcen` plane over `logmel` (B, T, F), a sample
        of training scenes, as the log-mel plane's `feature_mean` and `feature_std` are."""
        raw = pcen(logmel.transpose(1, 2), self.pcen_kernel)  # (B, F, T')
        per_band = raw.transpose(0, 1).reshape(raw.shape[1], -1)
        self.pcen_mean.copy_(per_band.mean(dim=1))
        self.pcen_std.copy_(per_band.std(dim=1).clamp_min(1e-3))

    def macs_per_frame(self) -> int:
        """Multiply-accumulates per output frame (convolutions only)."""
        fc, k = self.freq_channels, self.kernel
        bands = (self.n_mels + 1) // 2
        macs = bands * fc[0] * 9 * self.stem.in_channels  # each extra plane adds a stem's input
        macs += self.n_mels * self.pcen_frames  # the energy normalisation's smoother
        for a, b in itertools.pairwise(fc):
            bands = (bands + 1) // 2
            macs += bands * (a * 9 + a * b)
        macs += fc[-1] * self.bands_out * self.channels
        macs += len(self.dilations) * self.channels * self.channels * k + self.channels * self.n_classes
        return macs


class ScoresHead(nn.Module):
    """What gets exported: logits -> sigmoid scores."""

    def __init__(self, net: CompactTCN | FreqConvTCN) -> None:
        super().__init__()
        self.net = net

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(logmel))
