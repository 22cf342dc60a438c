"""A video file's audio track -> one PANN Cnn14 feature row per clip, torch-free (PyAV + ONNX Runtime).

The recipe of the QVHighlights audio features (Lighthouse's PANN extractor) as the manifest's
``PannEncoderSpec`` records it:

1. decode the file's first audio stream from its start (cut to the stream's declared duration, which
   drops the codec's end padding as the ffmpeg CLI does) and convert it with FFmpeg's swresample
   (PyAV ``AudioResampler``) to mono float32 at ``sample_rate`` (32 kHz): the channels are mixed down
   and resampled in one pass (Lighthouse decodes with librosa, which resamples with soxr: only the
   resampling filter differs);
2. cut the waveform into consecutive clips of ``clip_samples`` (2 s x 32 kHz = 64000) samples, clip i =
   samples [i * n, (i + 1) * n); a trailing partial clip is dropped, as Lighthouse does;
3. run each clip through ``audio_encoder.onnx`` (Cnn14 with its log-mel front end inside; batches of
   clips), giving (num_clips, 2048) un-normalised embeddings.

The pipeline then cuts audio and video groups to the shortest, as the official datasets do.

A file without an audio stream gets what ``no_audio_track`` says: ``"zeros"`` (one all-zero row per
video clip, and a note saying so: the official L2 normalisation keeps a zero row zero) or ``"refuse"``
(ExtractionError ``no_audio_stream``). An audio stream shorter than one clip is treated the same way.
Damaged audio packets are skipped and counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from service.inference.session import OnnxModel
from trdetr_common.audio_encoders import PannEncoderSpec

from .errors import ExtractionError


@dataclass
class AudioTrack:
    """Decoded mono audio at the encoder's rate; ``bad_packets``: damaged packets skipped."""

    samples: np.ndarray
    sample_rate: int
    bad_packets: int = 0

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def decode_audio(path: Path, sample_rate: int) -> AudioTrack | None:
    """The first audio stream of ``path`` as mono float32 at ``sample_rate``; None when there is none.

    Memory: the whole track, 4 bytes per sample (a 1-hour video: ~460 MB at 32 kHz), since Cnn14 needs
    each 2-s clip whole and the clips are batched.
    """
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise ExtractionError("not_a_video", f"{Path(path).name} cannot be opened: {exc}", file=Path(path).name) from None
    with container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        bad = 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                bad += 1
                continue
            for frame in frames:
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        declared = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if declared is not None:  # the codec's end padding (AAC frames are whole): trimmed as the ffmpeg CLI does
        samples = samples[: round(declared * sample_rate)]
    return AudioTrack(samples, sample_rate, bad)


def cut_clips(samples: np.ndarray, clip_samples: int) -> np.ndarray:
    """(num_samples,) -> (num_samples // clip_samples, clip_samples): whole clips, the partial tail dropped."""
    count = len(samples) // clip_samples
    return samples[: count * clip_samples].reshape(count, clip_samples)


@dataclass
class AudioFeatures:
    """One audio group's features (T, dim) float32 and what happened on the way."""

    features: np.ndarray
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


class PannGroupEncoder:
    """The bundle's ``audio_encoder.onnx`` for one audio group, loaded once, run per video."""

    def __init__(self, bundle_dir: Path, spec: PannEncoderSpec, *, device: str, intra_op_threads: int,
                 batch_size: int) -> None:
        self.spec = spec
        self.model = OnnxModel(Path(bundle_dir) / spec.onnx_file, device=device,  # type: ignore[arg-type]
                               intra_op_threads=intra_op_threads)
        self.batch_size = max(1, batch_size)

    @property
    def providers(self) -> list[str]:
        return self.model.providers

    def encode(self, clips: np.ndarray) -> np.ndarray:
        """(N, clip_samples) waveforms -> (N, dim) embeddings, ``batch_size`` clips per run."""
        outputs = [self.model.run({self.spec.input_name: clips[i:i + self.batch_size]})[self.spec.output_name]
                   for i in range(0, len(clips), self.batch_size)]
        return np.concatenate(outputs).astype(np.float32, copy=False) if outputs else np.zeros((0, self.spec.dim), np.float32)

    def extract(self, path: Path, group: str, video_clips: int) -> AudioFeatures:
        """The group's features for the file at ``path``; ``video_clips`` sizes the zeros of a silent file."""
        started = time.perf_counter()
        track = decode_audio(path, self.spec.sample_rate)
        clips = cut_clips(track.samples, self.spec.clip_samples) if track is not None else None
        if clips is None or len(clips) == 0:
            why = "has no audio track" if track is None else f"has {track.duration_s:.2f} s of audio, less than one clip"
            if self.spec.no_audio_track == "refuse":
                raise ExtractionError("no_audio_stream", f"{path.name} {why}, and this model needs audio "
                                      f"(audio group '{group}'): upload a video with sound", file=path.name)
            note = (f"{path.name} {why}: the audio group '{group}' is all zeros ({video_clips} clips), as the "
                    "bundle's audio encoder says (no_audio_track='zeros')")
            return AudioFeatures(np.zeros((video_clips, self.spec.dim), np.float32), [note], time.perf_counter() - started)
        notes = [f"{track.bad_packets} damaged audio packet(s) skipped while decoding"] if track.bad_packets else []
        features = self.encode(clips)
        return AudioFeatures(features, notes, time.perf_counter() - started)
