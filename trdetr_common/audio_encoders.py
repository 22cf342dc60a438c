"""Which encoder computes an audio feature group, and its exact preprocessing (manifest schema).

The QVHighlights audio features that TR-DETR (``a_feat_dir``) and Lighthouse (``clip_slowfast_pann``)
train on are PANN **Cnn14** embeddings (``Cnn14_mAP=0.431.pth``, Kong et al. 2020): mono audio
resampled to 32 kHz, cut into the video's 2-second clips, each clip through Cnn14 on its own; the
2048-d ``embedding`` output (``relu(fc1(max_t + mean_t of the frequency-averaged conv_block6 map))``,
the input of the AudioSet classifier) is the clip's feature. The network's own front end turns
the waveform into a log-mel spectrogram: Hann window 1024, hop 320, centred with reflect padding,
power spectrum, 64 Slaney mel bins over 50-14000 Hz, ``10 * log10(max(x, 1e-10))``.

``trdetr-export --pann PATH`` writes ``audio_encoder.onnx`` (front end inside the graph) and this
spec into the manifest; ``extraction`` decodes and cuts the audio exactly as written here.
This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trdetr_common.video_encoders import EncoderWeights

AUDIO_ALIGNMENT = (
    "audio groups are cut, with the video groups, to the shortest group's clip count (row i of every "
    "group is clip i); the TEF columns are computed from that common length, as the official "
    "start_end_dataset_audio and Lighthouse's dataset do"
)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PannEncoderSpec(_Spec):
    """PANN Cnn14: one clip of mono 32-kHz waveform -> its 2048-d embedding."""

    kind: Literal["pann_cnn14"] = "pann_cnn14"
    onnx_file: str = Field(default="audio_encoder.onnx", description="Bundle file of the audio encoder.")
    input_name: str = Field(default="waveform", description="float32 (B, samples) mono waveform in [-1, 1].")
    output_name: str = Field(default="embedding", description="float32 (B, dim): Cnn14's fc1 embedding.")
    dim: int = Field(default=2048, gt=0, description="Output width (the group's dim).")
    sample_rate: int = Field(default=32000, gt=0, description="Hz; decoded audio is resampled to this, mono.")
    window_size: int = Field(default=1024, gt=0, description="STFT window and FFT size (Hann).")
    hop_size: int = Field(default=320, gt=0, description="STFT hop in samples.")
    mel_bins: int = Field(default=64, gt=0, description="Slaney-normalised mel filters.")
    fmin: float = Field(default=50.0, description="Lowest mel frequency (Hz).")
    fmax: float = Field(default=14000.0, description="Highest mel frequency (Hz).")
    clip_samples: int = Field(
        default=64000, gt=0,
        description="Samples per clip (clip_length_s * sample_rate); clip i is samples [i*n, (i+1)*n).",
    )
    last_clip: str = Field(
        default="dropped: floor(samples / clip_samples) clips, as Lighthouse's PANN extractor does; the group "
        "is then cut with the video groups to the shortest (AUDIO_ALIGNMENT)",
        description="What happens to audio that does not fill a whole clip.",
    )
    resampler: str = Field(
        default="FFmpeg swresample (PyAV AudioResampler, format flt, layout mono, rate sample_rate): the "
        "channels averaged to mono and resampled; Lighthouse loads with librosa (soxr) instead, which "
        "differs only by the resampling filter",
        description="How decoded audio becomes mono float32 at sample_rate.",
    )
    no_audio_track: Literal["zeros", "refuse"] = Field(
        default="zeros",
        description="A video without an audio track: 'zeros' = the group is all-zero rows, one per video "
        "clip (the official L2 normalisation keeps a zero row zero), and the result carries a note saying "
        "so; 'refuse' = extraction fails with a message naming why.",
    )
    embedding: str = Field(
        default="Cnn14 'embedding' output: relu(fc1(max_over_time + mean_over_time of conv_block6 averaged "
        "over frequency)), eval mode (no dropout)",
        description="Which tensor of the network is the feature.",
    )
    weights: EncoderWeights
