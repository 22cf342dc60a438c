"""PANN Cnn14 in PyTorch (our code) and its checkpoint loader, for ``trdetr-export --pann``."""

from .model import Cnn14, Cnn14Config, mel_filterbank, stft_kernels
from .weights import LoadedPann, PannWeightsError, load_pann, random_pann, save_pann

__all__ = [
    "Cnn14",
    "Cnn14Config",
    "LoadedPann",
    "PannWeightsError",
    "load_pann",
    "mel_filterbank",
    "random_pann",
    "save_pann",
    "stft_kernels",
]
