"""A loaded model bundle: manifest, TR-DETR ONNX session and the optional text encoder."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from service.inference.bound import BoundRunner, default_buckets
from service.inference.session import CUDA, OnnxModel, cuda_provider_options, requested_providers
from service.inference.text_encoder import TextEncoder
from trdetr_common.features import with_tef
from trdetr_common.manifest import Manifest, verify_files

log = logging.getLogger(__name__)


class BundleError(RuntimeError):
    """The bundle directory cannot be served (missing files, checksum mismatch, wrong precision)."""


def resolve_precision(precision: str, *, cuda: bool, has_fp16: bool) -> str:
    """``TRDETR_PRECISION`` -> the graph to load: ``auto`` is fp16 on the CUDA EP when the bundle has an fp16
    graph (it passed the export's fp16 gates), else fp32; the CPU has no fp16 speed-up."""
    if precision != "auto":
        return precision
    return "fp16" if cuda and has_fp16 else "fp32"


class ModelBundle:
    """Everything the service needs from ``trdetr-export``'s output directory.

    ``io_binding``: run the model through :class:`~service.inference.bound.BoundRunner` buckets (``auto``: on the
    CUDA EP only); ``cuda_graph``: capture each bucket as a CUDA graph (no-op, logged, off the CUDA EP);
    ``max_batch_size``: the largest bucket.
    """

    def __init__(
        self,
        bundle_dir: Path,
        *,
        precision: Literal["auto", "fp32", "fp16", "int8"] = "auto",
        device: Literal["auto", "cpu", "cuda"] = "auto",
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        io_binding: Literal["auto", "on", "off"] = "off",
        cuda_graph: bool = False,
        max_batch_size: int = 32,
    ) -> None:
        self.dir = Path(bundle_dir)
        try:
            self.manifest = Manifest.load(self.dir)
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read the bundle manifest in {self.dir}: {exc}") from exc
        if problems := verify_files(self.dir, self.manifest):
            raise BundleError(f"bundle {self.dir} is damaged: " + "; ".join(problems))
        self.pre = self.manifest.preprocessing
        threads = {
            "device": device,
            "intra_op_threads": intra_op_threads,
            "inter_op_threads": inter_op_threads,
        }
        cuda_wanted = requested_providers(device, ort.get_available_providers())[0] == CUDA
        self.precision = resolve_precision(
            precision, cuda=cuda_wanted, has_fp16=bool(self.manifest.onnx.fp16_file)
        )
        self.model = self._load_model(threads, cuda_graph)
        if precision == "auto" and self.precision == "fp16" and not self.model.on_cuda:
            log.warning("the CUDA EP did not start: TRDETR_PRECISION=auto runs the fp32 graph on the CPU")
            self.precision = "fp32"
            self.model = self._load_model(threads, cuda_graph)
        if cuda_graph and not self.model.cuda_graph:
            log.warning(
                "TRDETR_CUDA_GRAPH=true has no effect: %s runs on %s, not the CUDA EP",
                self.model_file,
                ", ".join(self.model.providers),
            )
        self.bound: BoundRunner | None = None
        if io_binding == "on" or (io_binding == "auto" and self.model.on_cuda):
            self.bound = BoundRunner(
                self.model,
                buckets=default_buckets(max_batch_size),
                tokens=self.pre.max_text_tokens,
                clips=self.pre.max_video_clips,
            )
        self.text_encoder: TextEncoder | None = None
        spec = self.pre.text_encoder
        if spec.onnx_file and spec.tokenizer_file:
            encoder = OnnxModel(
                self.dir / spec.onnx_file,
                **threads,
                cuda_options=cuda_provider_options(fp32=True, cuda_graph=False),
            )
            self.text_encoder = TextEncoder(self.dir, self.pre, encoder, identity=self._text_identity())

    def _load_model(self, threads: dict, cuda_graph: bool) -> OnnxModel:
        """The session of :attr:`precision`'s graph (TF32 off unless fp16; CUDA-graph capture if asked)."""
        self.model_file = self._model_file(self.precision)
        options = cuda_provider_options(fp32=self.precision != "fp16", cuda_graph=cuda_graph)
        return OnnxModel(self.dir / self.model_file, **threads, cuda_options=options)

    def _text_identity(self) -> str:
        """sha256 over what decides a query's encoding: encoder and tokenizer files, cleaning, token selection."""
        spec, files = self.pre.text_encoder, self.manifest.files
        parts = [
            files[spec.onnx_file].sha256 if spec.onnx_file in files else spec.onnx_file,
            files[spec.tokenizer_file].sha256 if spec.tokenizer_file in files else spec.tokenizer_file,
            spec.text_cleaning,
            str(self.pre.max_text_tokens),
            str(self.pre.l2_normalize_text),
        ]
        return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()

    def _model_file(self, precision: str) -> str:
        """The bundle's graph file for ``precision``; BundleError when the bundle has none."""
        files = {
            "fp32": self.manifest.onnx.fp32_file,
            "fp16": self.manifest.onnx.fp16_file,
            "int8": self.manifest.onnx.int8_file,
        }
        if precision not in files:
            raise BundleError(f"TRDETR_PRECISION={precision} is not one of auto, fp32, fp16, int8")
        if not files[precision]:
            how = "trdetr-export --fp16" if precision == "fp16" else "trdetr-export --int8"
            raise BundleError(
                f"TRDETR_PRECISION={precision} but bundle {self.dir} has no {precision} graph "
                f"(re-export it with {how}); use fp32."
            )
        return files[precision]

    @property
    def providers(self) -> list[str]:
        return self.model.providers

    @property
    def stored_dim(self) -> int:
        """Width of stored features: the video groups then the audio groups concatenated, without TEF."""
        return self.pre.stored_dim

    def video_input(self, features: np.ndarray) -> np.ndarray:
        """Stored features (T, stored_dim) -> model video input (T, video_input_dim): the TEF of the whole
        video inserted after the video groups (and after the audio groups in the official audio layout);
        a window of a long video gets its own TEF (``trdetr_common.windows.fill_window``).

        One float32 allocation: a 3-hour video's input is ~61 MB.
        """
        if not self.pre.tef_after:
            return np.asarray(features, dtype=np.float32)
        return with_tef(features, self.pre.tef_after)

    @property
    def on_cuda(self) -> bool:
        return self.model.on_cuda

    @property
    def cuda_graph(self) -> bool:
        """CUDA graphs are captured and replayed (IOBinding buckets on the CUDA EP with capture on)."""
        return self.bound is not None and self.bound.cuda_graph

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The TR-DETR graph on a padded batch (see ``service.inference.batcher.build_batch``): through the
        IOBinding buckets when they are on and the batch fits them, else a plain session run."""
        if self.bound is not None and self.bound.fits(feeds):
            return self.bound.run(feeds)
        return self.model.run(feeds)

    def warmup(self, runs: int) -> None:
        """Run the model (and text encoder) ``runs`` times on a full-size dummy batch; with IOBinding, every
        bucket ``runs`` times (with CUDA graphs: until each bucket's graph is captured and replayed)."""
        rng = np.random.default_rng(0)
        if self.bound is not None:
            self.bound.warmup(runs, rng)
        clips, tokens = self.pre.max_video_clips, self.pre.max_text_tokens
        feeds = {
            "src_txt": rng.standard_normal((1, tokens, self.pre.text_dim), dtype=np.float32),
            "src_txt_mask": np.ones((1, tokens), dtype=np.float32),
            "src_vid": self.video_input(rng.standard_normal((clips, self.stored_dim), dtype=np.float32))[
                None
            ],
            "src_vid_mask": np.ones((1, clips), dtype=np.float32),
        }
        for _ in range(runs):
            if self.bound is None:
                self.run(feeds)
            if self.text_encoder is not None:
                self.text_encoder.encode(["a person is cooking in the kitchen"])
        log.info("warm-up done (%d runs)", runs)
