"""TR-DETR runs through ONNX Runtime IOBinding on fixed-shape buckets, optionally replayed as CUDA graphs.

A *bucket* is one batch size of a fixed set (:func:`default_buckets`: 1, 2, 4, ... up to the largest batch)
with the text padded to ``tokens`` (the manifest's ``max_text_tokens``, 32) and the video to ``clips`` (the
model's window, ``max_video_clips``). Every bucket owns input and output ``OrtValue`` s allocated once on the
session's device and bound once to its own ``IOBinding``; a run copies the batch into a host staging buffer
(zero padding: padded text/clip positions are masked, padded rows get one valid zero token and clip), copies
that into the bucket's device inputs with ``update_inplace`` and runs the binding. Nothing is allocated on the
device per run, and the device addresses never change, which is what CUDA-graph replay needs: with
``enable_cuda_graph`` each bucket runs under its own ``gpu_graph_id`` (ONNX Runtime keeps one graph per id in
one session, so the weights are held once), captured during :meth:`BoundRunner.warmup`.

Padding is free of accuracy loss because the exported model is batch- and padding-invariant (masked positions
and other rows never reach a row's outputs; ``tests/service/test_bound.py`` checks bucketed = plain runs
within 1e-5). The outputs are cut back to the real rows and clips.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from service.inference.session import OnnxModel

log = logging.getLogger(__name__)

TEXT, TEXT_MASK, VIDEO, VIDEO_MASK = "src_txt", "src_txt_mask", "src_vid", "src_vid_mask"
#: ONNX Runtime's CUDA EP runs a graph id this many times normally before it captures it (its memory
#: allocations settle first); warm-up runs each bucket this many times plus one replay.
CUDA_GRAPH_CAPTURE_RUNS = 3


def default_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Batch sizes to pre-allocate and capture: powers of two below ``max_batch_size``, then it."""
    sizes = {max_batch_size}
    size = 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


@dataclass
class _Bucket:
    """One batch size: its device inputs/outputs, their binding and the run options naming its CUDA graph."""

    batch: int
    inputs: dict[str, ort.OrtValue]
    outputs: dict[str, ort.OrtValue]
    binding: ort.IOBinding
    run_options: ort.RunOptions


class BoundRunner:
    """Fixed-shape, pre-allocated IOBinding runs of a TR-DETR session (thread-safe: one run at a time).

    Args:
        model: the session (CPU or CUDA EP; :attr:`OnnxModel.cuda_graph` turns graph capture on).
        buckets: batch sizes, e.g. :func:`default_buckets` of ``TRDETR_MAX_BATCH_SIZE``.
        tokens: text length every batch is padded to (``max_text_tokens``).
        clips: video length every batch is padded to (``max_video_clips``).
    """

    def __init__(self, model: OnnxModel, *, buckets: Sequence[int], tokens: int, clips: int) -> None:
        self.model = model
        self.device = "cuda" if model.on_cuda else "cpu"
        self.cuda_graph = model.cuda_graph
        self.buckets = tuple(sorted(set(buckets)))
        self.tokens, self.clips = tokens, clips
        self._dims = {"batch": self.buckets[-1], "text_tokens": tokens, "video_clips": clips}
        inputs = {i.name: i for i in model.session.get_inputs()}
        self._dim_names = {i.name: i.shape for i in [*inputs.values(), *model.session.get_outputs()]}
        self._staging = {
            name: np.zeros(self._shape(name, self.buckets[-1]), dtype=np.float32) for name in inputs
        }
        self._dirty = {TEXT: (0, 0), VIDEO: (0, 0)}  # (rows, length) holding data; the rest is zero
        self._bound = {batch: self._bucket(index, batch) for index, batch in enumerate(self.buckets)}
        self._lock = threading.Lock()
        self.runs: Counter[int] = Counter()  # runs per bucket (warm-up included)

    def _shape(self, name: str, batch: int) -> tuple[int, ...]:
        """Concrete shape of input/output ``name`` for a bucket: symbolic dims -> batch, tokens, clips."""
        dims = {**self._dims, "batch": batch}
        shape = []
        for dim in self._dim_names[name]:
            if isinstance(dim, int):
                shape.append(dim)
            elif dim in dims:
                shape.append(dims[dim])
            else:
                raise ValueError(
                    f"{self.model.path.name}: dimension {dim!r} of {name} is not batch, text_tokens or "
                    "video_clips; IOBinding buckets cannot size it"
                )
        return tuple(shape)

    def _bucket(self, index: int, batch: int) -> _Bucket:
        """Allocate one bucket's device inputs and outputs and bind them (once)."""
        session = self.model.session

        def allocate(name: str) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_shape_and_type(
                self._shape(name, batch), np.float32, self.device, 0
            )

        inputs = {name: allocate(name) for name in self._staging}
        outputs = {o.name: allocate(o.name) for o in session.get_outputs()}
        binding = session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, value)
        run_options = ort.RunOptions()
        if self.cuda_graph:  # ids start at 1 (ORT: 0 is its default graph, -1 disables capture)
            run_options.add_run_config_entry("gpu_graph_id", str(index + 1))
        return _Bucket(batch, inputs, outputs, binding, run_options)

    def fits(self, feeds: dict[str, np.ndarray]) -> bool:
        """The batch fits the largest bucket (rows, tokens and clips)."""
        rows, tokens = feeds[TEXT].shape[:2]
        return rows <= self.buckets[-1] and tokens <= self.tokens and feeds[VIDEO].shape[1] <= self.clips

    def bucket_for(self, rows: int) -> int:
        """The smallest bucket holding ``rows`` rows."""
        return self.buckets[bisect.bisect_left(self.buckets, rows)]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model on a padded batch (``src_txt`` (B, L_t, D_t), ``src_txt_mask`` (B, L_t), ``src_vid``
        (B, L_v, D_v), ``src_vid_mask`` (B, L_v); B, L_t, L_v within :meth:`fits`), through the bucket of B.

        Returns every output cut back to B rows (and ``saliency_scores`` (B, L_v) to L_v clips), as fresh arrays.
        """
        rows, clips = feeds[TEXT].shape[0], feeds[VIDEO].shape[1]
        bucket = self._bound[self.bucket_for(rows)]
        with self._lock:
            self._stage(feeds, bucket.batch)
            for name, value in bucket.inputs.items():
                value.update_inplace(self._staging[name][: bucket.batch])
            self.model.session.run_with_iobinding(bucket.binding, bucket.run_options)
            self.runs[bucket.batch] += 1
            return {
                name: self._cut(name, value.numpy(), rows, clips) for name, value in bucket.outputs.items()
            }

    def _cut(self, name: str, output: np.ndarray, rows: int, clips: int) -> np.ndarray:
        """A copy of ``output`` (bucket shape) cut to ``rows`` and, on its video_clips axis, ``clips``."""
        index = tuple(
            slice(0, rows) if dim == "batch" else slice(0, clips) if dim == "video_clips" else slice(None)
            for dim in self._dim_names[name]
        )
        return np.array(output[index], dtype=np.float32, copy=True)  # the bucket's buffer is reused next run

    def _stage(self, feeds: dict[str, np.ndarray], batch: int) -> None:
        """Write the batch into the staging buffers, zero-padded to ``batch`` rows, ``tokens`` and ``clips``."""
        rows = feeds[TEXT].shape[0]
        for data, mask in ((TEXT, TEXT_MASK), (VIDEO, VIDEO_MASK)):
            self._write(data, feeds[data], rows)
            staged = self._staging[mask][:batch]
            staged.fill(0.0)
            staged[:rows, : feeds[mask].shape[1]] = feeds[mask]
            staged[rows:, 0] = 1.0  # padding rows: one valid (zero) position, so no row is fully masked

    def _write(self, name: str, data: np.ndarray, rows: int) -> None:
        """Copy ``data`` (rows, L, D) into staging ``name`` and zero what the previous run left beyond it.

        Only the region the previous run wrote is cleared, not the whole (largest bucket) buffer.
        """
        buffer, length = self._staging[name], data.shape[1]
        old_rows, old_length = self._dirty[name]
        buffer[:rows, :length] = data
        if old_length > length:
            buffer[: min(rows, old_rows), length:old_length] = 0.0
        if old_rows > rows:
            buffer[rows:old_rows, :old_length] = 0.0
        self._dirty[name] = (rows, length)

    def warmup(self, runs: int, rng: np.random.Generator | None = None) -> None:
        """Run every bucket ``runs`` times on full-size random batches; with CUDA graphs at least
        :data:`CUDA_GRAPH_CAPTURE_RUNS` + 1 times, so each bucket's graph is captured and replayed once."""
        rng = rng or np.random.default_rng(0)
        runs = max(runs, CUDA_GRAPH_CAPTURE_RUNS + 1) if self.cuda_graph else runs
        for batch in self.buckets:
            feeds = {
                name: rng.standard_normal(self._shape(name, batch), dtype=np.float32)
                for name in (TEXT, VIDEO)
            }
            feeds |= {
                mask: np.ones(self._shape(mask, batch), dtype=np.float32) for mask in (TEXT_MASK, VIDEO_MASK)
            }
            for _ in range(runs):
                self.run(feeds)
        log.info(
            "IOBinding buckets %s warmed up on %s (%d runs each%s)",
            list(self.buckets),
            self.device,
            runs,
            ", CUDA graphs captured" if self.cuda_graph else "",
        )
