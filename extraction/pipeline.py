"""``Extractor``: a video file -> one (T, d) feature array per video group of a bundle's manifest.

The video is decoded once; each decoded frame goes through every group's FFmpeg chain, the groups'
samplers turn the filtered frames into encoder inputs, and the encoders run in batches on ONNX
Runtime (CUDA EP when present). A bundle whose model was trained with audio also gets its audio
groups (PANN Cnn14, :mod:`extraction.audio`) from the file's audio track. Frames are streamed: memory is bounded by one clip plus one batch
per group, whatever the video's length. The groups are then cut to the same number of clips (the
official dataset's rule) and returned un-normalised, exactly as a features upload takes them.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from trdetr_common.manifest import Manifest, verify_files

from .audio import PannGroupEncoder
from .decode import ChainDecoder
from .encoders import GROUP_RUNS, GroupEncoder, GroupRun
from .errors import ExtractionError
from .probe import VideoProbe, probe_video

Progress = Callable[[float], None]
_PROGRESS_STEP = 0.01


@dataclass
class ExtractedVideo:
    """Features of one video, in the manifest's group order.

    Attributes:
        groups: group name -> (num_clips, dim) float32, un-normalised encoder outputs.
        num_clips: clips per group (all groups have the same count).
        duration_s: the video's duration.
        notes: what was adjusted (groups cut to the same length, damaged packets skipped...).
        probe: the container facts the extraction used.
        timings_s: wall seconds per stage ("decode" = decoding, filtering and sampling; one per group for
            its encoder; "total").
    """

    groups: dict[str, np.ndarray]
    num_clips: int
    duration_s: float
    notes: list[str] = field(default_factory=list)
    probe: VideoProbe | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


def npz_bytes(video: ExtractedVideo) -> bytes:
    """The ``.npz`` bytes of ``video.groups`` (float32, one array per group): what ``trdetr-extract`` writes.

    Same layout as ``numpy.savez`` (uncompressed zip of ``.npy`` files) but with fixed zip timestamps,
    so the same features always give the same bytes.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in video.groups.items():
            entry = io.BytesIO()
            np.lib.format.write_array(entry, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), entry.getvalue())
    return buffer.getvalue()


class Extractor:
    """The bundle's video encoders, loaded once; ``extract`` runs them over one video file.

    Args:
        bundle_dir: a bundle written by ``trdetr-export`` (its files are checked against the manifest).
        device: "auto" (CUDA EP when usable, else CPU), "cpu" or "cuda" (fail when CUDA is not usable).
        intra_op_threads: ONNX Runtime CPU threads per encoder (0 = one per core).
        batch_size: samples per encoder run (clips for SlowFast, frames for CLIP).
    Attributes:
        missing_groups: video groups of the manifest that no bundled encoder computes.
    """

    def __init__(self, bundle_dir: Path, *, device: Literal["auto", "cpu", "cuda"] = "auto",
                 intra_op_threads: int = 0, batch_size: int = 4) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = Manifest.load(self.bundle_dir)
        if problems := verify_files(self.bundle_dir, self.manifest):
            raise ValueError(f"bundle {self.bundle_dir} is damaged: " + "; ".join(problems))
        self.clip_length_s = self.manifest.preprocessing.clip_length_s
        self.group_names = [g.name for g in self.manifest.preprocessing.video_groups]
        self.audio_encoders: dict[str, PannGroupEncoder] = {
            g.name: PannGroupEncoder(self.bundle_dir, g.encoder, device=device, intra_op_threads=intra_op_threads,
                                     batch_size=batch_size)
            for g in self.manifest.preprocessing.audio_groups if g.encoder is not None
        }
        self.missing_groups: list[str] = self.manifest.groups_without_encoder()
        self.encoders: dict[str, GroupEncoder] = {
            g.name: GROUP_RUNS[g.encoder.kind](self.bundle_dir, g.encoder, device=device,
                                               intra_op_threads=intra_op_threads, batch_size=batch_size)
            for g in self.manifest.preprocessing.video_groups if g.encoder is not None
        }

    @property
    def providers(self) -> dict[str, list[str]]:
        """Execution providers each encoder runs on."""
        return {name: encoder.providers for name, encoder in [*self.encoders.items(), *self.audio_encoders.items()]}

    def extract(self, path: Path, *, max_duration_s: float | None = None, progress: Progress | None = None) -> ExtractedVideo:
        """Features of the video at ``path``.

        Raises:
            ExtractionError: ``encoder_missing`` (some group has no encoder), ``video_too_long`` (checked
                before decoding), ``not_a_video``, ``no_video_stream``, ``unsupported_codec``,
                ``corrupt_video``, ``empty_video``.
        """
        started = time.perf_counter()
        if self.missing_groups:
            raise ExtractionError(
                "encoder_missing",
                f"the bundle has no encoder for the feature group(s) {', '.join(self.missing_groups)}: "
                "extract those features yourself and upload them, or export a bundle with the encoders "
                "(trdetr-export --clip DIR --slowfast PATH, and --pann PTH for audio)",
                groups=list(self.missing_groups),
            )
        probe = probe_video(path)
        if max_duration_s is not None and probe.duration_s > max_duration_s:
            raise ExtractionError(
                "video_too_long", f"{probe.path.name} lasts {probe.duration_s:.1f} s; at most {max_duration_s:g} s "
                "are accepted: cut the video", duration_s=probe.duration_s, max_duration_s=max_duration_s,
            )
        runs = {name: encoder.start(probe, self.clip_length_s) for name, encoder in self.encoders.items()}
        decoder = ChainDecoder(probe, {name: run.chain for name, run in runs.items()})
        self._decode(decoder, runs, probe, progress)
        features = {name: runs[name].finish() for name in self.group_names}
        video_clips = min(len(array) for array in features.values())
        audio_notes, audio_s = [], {}
        for name, audio_encoder in self.audio_encoders.items():
            audio = audio_encoder.extract(probe.path, name, video_clips)
            features[name], audio_s[name] = audio.features, audio.seconds
            audio_notes += audio.notes
        video = self._assemble(features, decoder, probe)
        video.notes += audio_notes
        encode_s = {name: run.encoder.seconds for name, run in runs.items()} | audio_s
        total = time.perf_counter() - started
        video.timings_s = {"decode": total - sum(encode_s.values()), **encode_s, "total": total}
        if progress:
            progress(1.0)
        return video

    def _decode(self, decoder: ChainDecoder, runs: dict[str, GroupRun], probe: VideoProbe, progress: Progress | None) -> None:
        """Feed every filtered frame to its group's run, reporting progress by decoded time."""
        reported = 0.0
        for name, frame in decoder:
            runs[name].add(frame)
            if progress is not None:
                fraction = min(0.99, decoder.last_time_s / probe.duration_s)
                if fraction - reported >= _PROGRESS_STEP:
                    reported = fraction
                    progress(fraction)

    def _assemble(self, features: dict[str, np.ndarray], decoder: ChainDecoder, probe: VideoProbe) -> ExtractedVideo:
        """Check the decode went through, cut the groups to one length, and say what happened."""
        name = probe.path.name
        if decoder.decoded_frames == 0:
            raise ExtractionError("empty_video", f"{name}: no frame could be decoded", file=name)
        # a container-level duration may cover a longer audio track: there, the data of any stream counts
        end = decoder.last_time_s if probe.duration_source == "stream" else max(decoder.last_time_s, decoder.last_packet_time_s)
        if probe.duration_s - end > max(self.clip_length_s, 1.0):
            raise ExtractionError(
                "corrupt_video",
                f"{name} is truncated or damaged: its data stops at {end:.1f} s of the "
                f"{probe.duration_s:.1f} s it declares; upload the complete file",
                file=name, decoded_until_s=round(end, 3), duration_s=probe.duration_s,
            )
        lengths = {group: len(array) for group, array in features.items()}
        num_clips = min(lengths.values())
        if num_clips == 0:
            raise ExtractionError("empty_video", f"{name}: too short to give a single clip", file=name)
        notes = []
        if len(set(lengths.values())) > 1:
            notes.append(f"groups cut to the shortest one ({num_clips} clips; before: "
                         + ", ".join(f"{g} {n}" for g, n in lengths.items()) + ")")
        if decoder.bad_packets:
            notes.append(f"{decoder.bad_packets} damaged video packet(s) skipped while decoding")
        if probe.duration_source != "stream":
            notes.append("the video stream declares no duration; the container's was used")
        groups = {group: array[:num_clips] for group, array in features.items()}
        return ExtractedVideo(groups=groups, num_clips=num_clips, duration_s=probe.duration_s, notes=notes, probe=probe)
