"""Decode a video once with PyAV and run every frame through one FFmpeg filter graph per encoder.

Timestamps are handled as the ``ffmpeg`` command line does before its filters: the container's start
time is subtracted, frames without a timestamp continue from the previous one, and the rotation
metadata is applied first (autorotate). Frames come out as (H, W, 3) uint8 RGB arrays, one at a time,
so memory stays bounded whatever the video's length.

Damaged packets are skipped as the ffmpeg CLI skips them (counted in :attr:`ChainDecoder.bad_packets`),
a demuxer error ends the stream (:attr:`ChainDecoder.demux_error`);
a file whose decodable frames end well before its declared duration is reported as truncated by
the caller.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from fractions import Fraction

import av
import numpy as np
from av.filter import Graph

from .frames import FrameChain, rotation_filters
from .probe import VideoProbe, open_container, video_stream

DECODER_THREADS = 0  # FFmpeg picks (one per core, frame + slice threading)
_AVFMT_NOTIMESTAMPS = 0x0080  # libavformat: the format has no timestamps (raw streams)


class _DurationEstimate:
    """A frame's duration as the ffmpeg CLI estimates it (fftools ``video_duration_estimate``).

    It matters at the end: the filter graph's end-of-stream time is the last frame's time plus its
    duration, which decides how many frames the fps filter emits for the last instant.
    """

    def __init__(self, stream: av.video.stream.VideoStream, time_base: Fraction, ts_unreliable: bool) -> None:
        rate = stream.codec_context.framerate
        self.codec = max(0, round(1 / (Fraction(rate) * time_base))) if rate else 0
        self.ts_unreliable = ts_unreliable
        self.last = 1

    def __call__(self, frame: av.VideoFrame, pts: int, previous: int | None) -> int:
        given = frame.duration or 0
        ts_diff = pts - previous if previous is not None else -1
        if given > 0 and not self.ts_unreliable and not (given == 1 and ts_diff > 2):
            self.last = given
        elif self.codec > 0 and self.ts_unreliable:
            self.last = self.codec
        elif ts_diff > 0:
            self.last = ts_diff
        elif given > 0:
            self.last = given
        elif self.codec > 0:
            self.last = self.codec
        return self.last


class _ChainGraph:
    """One configured filter graph: buffer -> rotation -> fps -> scale -> crop -> rgb24 -> sink."""

    def __init__(self, stream: av.video.stream.VideoStream, chain: FrameChain, rotation_deg: int) -> None:
        self.graph = Graph()
        nodes = [self.graph.add_buffer(template=stream)]
        for name, args in [*rotation_filters(rotation_deg), *chain.filters(), ("format", "pix_fmts=rgb24")]:
            nodes.append(self.graph.add(name, args) if args is not None else self.graph.add(name))
        nodes.append(self.graph.add("buffersink"))
        for upstream, downstream in zip(nodes, nodes[1:], strict=False):
            upstream.link_to(downstream)
        self.graph.configure()

    def push(self, frame: av.VideoFrame | None) -> list[np.ndarray]:
        """Feed one frame (None = end of stream); returns the frames the graph lets out now."""
        self.graph.push(frame)
        out = []
        while True:
            try:
                filtered = self.graph.pull()
            except (av.BlockingIOError, av.EOFError):
                return out
            out.append(filtered.to_ndarray(format="rgb24"))


class ChainDecoder:
    """Iterate ``(chain name, frame)`` over every chain's output frames, in decoding order.

    Attributes (valid after iteration):
        decoded_frames: frames the decoder produced.
        bad_packets: packets the decoder rejected (skipped).
        last_time_s: presentation time of the last decoded frame plus its duration (seconds).
        last_packet_time_s: end of the last packet of any stream (seconds).
        demux_error: the demuxer's error message when it broke off.
    """

    def __init__(self, probe: VideoProbe, chains: Mapping[str, FrameChain]) -> None:
        self.probe = probe
        self.chains = dict(chains)
        self.decoded_frames = 0
        self.bad_packets = 0
        self.last_time_s = 0.0
        self.demux_error: str | None = None
        self.last_packet_time_s = 0.0

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        with open_container(self.probe.path) as container:
            stream = video_stream(container, self.probe.path.name)
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = DECODER_THREADS
            graphs = {name: _ChainGraph(stream, chain, self.probe.rotation_deg) for name, chain in self.chains.items()}
            for frame in self._frames(container, stream):
                for name, graph in graphs.items():
                    for array in graph.push(frame):
                        yield name, array
            for name, graph in graphs.items():
                for array in graph.push(None):
                    yield name, array

    def _frames(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
        """Decoded frames with the CLI's timestamps: start time removed, missing ones filled in, durations set."""
        time_base = stream.time_base or Fraction(1, 90000)
        offset = round(Fraction(container.start_time or 0, av.time_base) / time_base)
        estimate = _DurationEstimate(stream, time_base, bool(container.format.flags & _AVFMT_NOTIMESTAMPS))
        previous: int | None = None
        for frames in self._decoded_packets(container, stream):
            for frame in frames:
                if frame.pts is not None:
                    pts = frame.pts - offset
                else:
                    pts = previous + estimate.last if previous is not None else 0
                if previous is not None and pts <= previous:
                    pts = previous + 1  # the fps filter needs increasing timestamps
                frame.duration = estimate(frame, pts, previous)
                frame.pts, frame.time_base = pts, time_base
                previous = pts
                self.decoded_frames += 1
                self.last_time_s = float((pts + frame.duration) * time_base)
                yield frame

    def _decoded_packets(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[list[av.VideoFrame]]:
        """Frames of each video packet; damaged packets are skipped, a demuxer failure ends the stream.

        Every stream is demuxed (only the video is decoded) so that ``last_packet_time_s`` tells where the
        file's data ends, which checks truncation when only the container declares a duration.
        """
        start = (container.start_time or 0) / av.time_base
        packets = container.demux()
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as error:  # the container breaks off (truncated file)
                self.demux_error = str(error)
                return
            if packet.pts is not None and packet.time_base:
                end = float((packet.pts + (packet.duration or 0)) * packet.time_base) - start
                self.last_packet_time_s = max(self.last_packet_time_s, end)
            if packet.stream_index != stream.index:
                continue
            try:
                yield packet.decode()
            except av.FFmpegError:
                self.bad_packets += 1
