"""PANN Cnn14 (Kong et al., "PANNs", 2020) from waveform to its 2048-d embedding, at inference.

The module names follow the released ``Cnn14_mAP=0.431.pth`` state_dict, so it loads as is:

- ``spectrogram_extractor.stft.conv_real`` / ``conv_imag``: the STFT as two 1-D convolutions whose
  kernels are the periodic-Hann-windowed DFT basis (n_fft taps, stride hop), after reflect padding of
  n_fft // 2 on both sides (``center=True``); power = real^2 + imag^2, (B, 1, frames, n_fft // 2 + 1);
- ``logmel_extractor.melW`` (n_fft // 2 + 1, mel_bins): Slaney mel filters, then
  ``10 * log10(max(mel, 1e-10))`` (ref 1, no top_db), (B, 1, frames, mel_bins);
- ``bn0`` over the mel bins, six conv blocks (two 3x3 conv + BN + ReLU, then 2x2 average pooling; 1x1
  for the last), mean over frequency, max + mean over time, ``fc1`` + ReLU = the embedding (B, 2048).

In eval mode the dropouts and SpecAugment of training do nothing, so they are absent. The classifier
``fc_audioset`` is kept (loaded, unused by the embedding) so the state_dict matches the release.
Everything is traceable to ONNX with a dynamic batch (clips).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Cnn14Config:
    """Front-end and head sizes; the defaults are the released Cnn14's (32 kHz, 1024/320, 64 mels)."""

    sample_rate: int = 32000
    window_size: int = 1024
    hop_size: int = 320
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 14000.0
    classes_num: int = 527
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)

    @property
    def embedding_dim(self) -> int:
        return self.channels[-1]

    def to_dict(self) -> dict:
        return asdict(self)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, hz / f_sp)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-style triangular mel filters with area normalisation (librosa's ``filters.mel`` defaults).

    Returns:
        (n_fft // 2 + 1, n_mels) float32, i.e. ``melW`` (frequency bins x mel bins).
    """
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2:n_mels + 2] - mel_points[:n_mels]))[:, None]
    return weights.T.astype(np.float32)


def stft_kernels(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """(real, imag) conv1d kernels (n_fft // 2 + 1, 1, n_fft) of the periodic-Hann-windowed DFT."""
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann (scipy get_window('hann', fftbins=True))
    angles = 2 * np.pi * np.outer(np.arange(n_fft // 2 + 1), n) / n_fft
    real = (np.cos(angles) * window)[:, None, :]
    imag = (-np.sin(angles) * window)[:, None, :]
    return real.astype(np.float32), imag.astype(np.float32)


class _Stft(nn.Module):
    def __init__(self, n_fft: int) -> None:
        super().__init__()
        bins = n_fft // 2 + 1
        self.conv_real = nn.Conv1d(1, bins, n_fft, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, n_fft, bias=False)
        real, imag = stft_kernels(n_fft)
        with torch.no_grad():
            self.conv_real.weight.copy_(torch.from_numpy(real))
            self.conv_imag.weight.copy_(torch.from_numpy(imag))


class Spectrogram(nn.Module):
    """(B, samples) -> power spectrogram (B, 1, frames, n_fft // 2 + 1); frames = samples // hop + 1."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.stft = _Stft(n_fft)

    def forward(self, waveform: Tensor) -> Tensor:
        x = F.pad(waveform[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        real = F.conv1d(x, self.stft.conv_real.weight, stride=self.hop)
        imag = F.conv1d(x, self.stft.conv_imag.weight, stride=self.hop)
        return (real ** 2 + imag ** 2).transpose(1, 2)[:, None]


class LogMel(nn.Module):
    """Power spectrogram (B, 1, frames, bins) -> log-mel (B, 1, frames, mel_bins) in dB (ref 1, amin 1e-10)."""

    def __init__(self, config: Cnn14Config) -> None:
        super().__init__()
        bank = mel_filterbank(config.sample_rate, config.window_size, config.mel_bins, config.fmin, config.fmax)
        self.melW = nn.Parameter(torch.from_numpy(bank), requires_grad=False)

    def forward(self, power: Tensor) -> Tensor:
        mel = torch.matmul(power, self.melW)
        return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))


class ConvBlock(nn.Module):
    """Two 3x3 convolutions (no bias) with BatchNorm and ReLU, then average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor, pool: int) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool) if pool > 1 else x


class Cnn14(nn.Module):
    """``forward(waveform (B, samples) float32 mono at sample_rate) -> embedding (B, 2048)``."""

    def __init__(self, config: Cnn14Config | None = None) -> None:
        super().__init__()
        self.config = config = config or Cnn14Config()
        self.spectrogram_extractor = Spectrogram(config.window_size, config.hop_size)
        self.logmel_extractor = LogMel(config)
        self.bn0 = nn.BatchNorm2d(config.mel_bins)
        widths = (1, *config.channels)
        for index in range(len(config.channels)):
            self.add_module(f"conv_block{index + 1}", ConvBlock(widths[index], widths[index + 1]))
        self.fc1 = nn.Linear(config.embedding_dim, config.embedding_dim)
        self.fc_audioset = nn.Linear(config.embedding_dim, config.classes_num)

    def log_mel(self, waveform: Tensor) -> Tensor:
        """(B, samples) -> (B, 1, frames, mel_bins), the network's input after ``bn0``."""
        x = self.logmel_extractor(self.spectrogram_extractor(waveform))
        return self.bn0(x.transpose(1, 3)).transpose(1, 3)

    def forward(self, waveform: Tensor) -> Tensor:
        x = self.log_mel(waveform)
        blocks = len(self.config.channels)
        for index in range(blocks):
            x = getattr(self, f"conv_block{index + 1}")(x, 2 if index < blocks - 1 else 1)
        x = x.mean(dim=3)  # over mel bins: (B, C, frames)
        x = x.max(dim=2).values + x.mean(dim=2)
        return F.relu(self.fc1(x))
