"""Benchmark: PANN audio extraction speed as seconds of audio per second of wall time, per stage.

Builds (once, cached in ``--work-dir``) the *real-size* PANN Cnn14 (80 M parameters, 2048-d embedding) with
random weights, exported to ``audio_encoder.onnx`` exactly as ``trdetr-export --pann`` does (log-mel
front end inside the graph). Then, on one synthetic video with a stereo 44.1-kHz AAC track (``--seconds``),
in one run so the ratios are comparable on a noisy machine:

- ``decode``: PyAV decoding of the audio stream + swresample to 32 kHz mono (``extraction.audio.decode_audio``);
- ``cnn14``: the ONNX encoder alone on the 2-s clips, per batch size;
- ``full``: decode + cut + encoder (``PannGroupEncoder.extract``), per batch size.

Each stage reports audio seconds / wall seconds (>= 1 means faster than real time) and audio seconds /
CPU seconds of this process (all threads); the load average is printed, since other load moves the wall figure.

    .venv/bin/python bench/bench_audio.py --seconds 30 --batch-sizes 1 4

Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extraction.audio import PannGroupEncoder, cut_clips, decode_audio  # noqa: E402
from trdetr_common.audio_encoders import PannEncoderSpec  # noqa: E402
from trdetr_common.video_encoders import EncoderWeights  # noqa: E402


def build_encoder(work_dir: Path) -> PannEncoderSpec:
    """Real-size random Cnn14 -> ``work_dir/audio_encoder.onnx`` (cached); returns its spec."""
    if not (work_dir / "audio_encoder.onnx").exists():
        from model_export.export.audio_encoder import export_pann
        from model_export.pann import LoadedPann, random_pann

        export_pann(LoadedPann(random_pann(seed=0), "random", None, "random-init"), work_dir, 18, 2.0)
    return PannEncoderSpec(weights=EncoderWeights(file_name="random", format="random-init", untrained=True))


def write_video(path: Path, seconds: float) -> Path:
    """A tiny MPEG-4 video with a stereo 44.1-kHz AAC track of noise and tones."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=5)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=44100, layout="stereo")
        for i in range(int(seconds * 5)):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 5)
            out.mux(video.encode(frame))
        out.mux(video.encode())
        total = int(seconds * 44100)
        t = np.arange(total) / 44100
        wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(total)).astype(np.float32)
        for start in range(0, total, 1024):
            chunk = np.stack([wave[start:start + 1024]] * 2)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 44100, start
            out.mux(audio.encode(frame))
        out.mux(audio.encode())
    return path


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall s, CPU s of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = one per core)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/trdetr-bench-audio"))
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    spec = build_encoder(args.work_dir)
    path = write_video(args.work_dir / "audio.mp4", args.seconds)
    print(f"load average before: {os.getloadavg()[0]:.1f}; {args.seconds:g} s of stereo 44.1-kHz AAC")
    rows = []
    wall, cpu = timed(lambda: decode_audio(path, spec.sample_rate))
    rows.append(("decode + resample to 32 kHz mono", "-", wall, cpu))
    track = decode_audio(path, spec.sample_rate)
    assert track is not None
    clips = cut_clips(track.samples, spec.clip_samples)
    for batch in args.batch_sizes:
        encoder = PannGroupEncoder(args.work_dir, spec, device="cpu", intra_op_threads=args.threads, batch_size=batch)
        encoder.encode(clips[:1])  # warm-up
        wall, cpu = timed(lambda enc=encoder: enc.encode(clips))
        rows.append(("Cnn14 encoder (ONNX)", str(batch), wall, cpu))
        wall, cpu = timed(lambda enc=encoder: enc.extract(path, "pann", len(clips)))
        rows.append(("full (decode + clips + encoder)", str(batch), wall, cpu))
    audio_s = len(clips) * 2.0
    print("| stage | batch | audio s / wall s | audio s / CPU s |\n| --- | ---: | ---: | ---: |")
    for name, batch, wall, cpu in rows:
        print(f"| {name} | {batch} | {audio_s / wall:.2f} | {audio_s / max(cpu, 1e-9):.2f} |")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
