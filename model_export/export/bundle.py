"""Write and verify model bundles: ONNX graphs + ``manifest.json`` + ``parity.json``.

``export_bundle`` is what ``trdetr-export CKPT --out DIR`` runs; ``verify_bundle`` is
``trdetr-export verify DIR``. A bundle whose parity gates fail gets its ``parity.json`` (to read
why) but no ``manifest.json``, so the service cannot load it.

Reproducible: no file holds a path of the machine that wrote it (the ONNX graphs go through
``strip_build_metadata``; the manifest names the checkpoint by file name and sha256), and the one
clock reading, ``created_at`` in manifest.json and parity.json, is ``SOURCE_DATE_EPOCH`` when that is
set (https://reproducible-builds.org/specs/source-date-epoch/). With the same inputs, library
versions and CPU the bundle is the same bytes; parity.json (and so manifest.json, which holds its
sha256 and summary) also records measured torch-vs-ORT differences and the library versions, which
may change in the last digits on another CPU or with other versions.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pydantic
import torch
from tqdm import tqdm

from model_export import load_checkpoint, read_checkpoint
from model_export.config import TRDETRConfig
from model_export.pann import LoadedPann
from model_export.slowfast import LoadedSlowFast
from trdetr_common.audio_encoders import AUDIO_ALIGNMENT
from trdetr_common.manifest import (
    MANIFEST_NAME,
    AudioFeatureGroup,
    FileEntry,
    Manifest,
    OnnxSpec,
    PreprocessingContract,
    SourceCheckpoint,
    TextEncoderSpec,
    VideoFeatureGroup,
    file_entry,
    sha256_file,
    verify_files,
)
from trdetr_common.text import OPENAI_CLIP, QueryTokenizer

from .audio_encoder import AUDIO_ONNX, attach_audio_encoder, check_audio_encoder_runs, check_pann, export_pann
from .cases import InputSpec, random_cases
from .checks import GateRun, build_cases, memoize, run_gates, torch_runner
from .fp16 import convert_to_fp16
from .graph_opt import optimise_graph
from .image_encoder import IMAGE_ONNX, check_image_encoder, clip_towers, export_image_encoder
from .int8 import INT8_FILE, Int8Info, Int8Mode, calibration_batches, dataset_cases, quantize_int8, r1_at_05
from .layouts import AudioLayout, VideoLayout, resolve_audio_layout, resolve_video_layout
from .onnx_export import (
    DEFAULT_OPSET,
    TRDETR_DYNAMIC_AXES,
    TRDETR_INPUTS,
    TRDETR_OUTPUTS,
    dynamic_axis_problems,
    export_trdetr,
    gru_problems,
    store_exact_fp16_weights,
    strip_build_metadata_file,
)
from .parity import (
    CPU,
    ParityError,
    Thresholds,
    int8_gate,
    make_session,
    ort_runner,
    r1_gate,
    raise_on_failure,
    summarize,
)
from .slowfast_encoder import SLOWFAST_ONNX, check_slowfast, export_slowfast
from .text_encoder import (
    CHECK_QUERIES,
    EMBED_OUTPUT,
    TEXT_OUTPUT,
    check_text_encoder,
    encode_batch,
    export_text_encoder,
)
from .video_encoders import attach_encoders, check_video_encoders_run

FP32_FILE = "model.onnx"
FP16_FILE = "model.fp16.onnx"
PARITY_FILE = "parity.json"
INT8_CALIBRATION_ROWS = 128
INT8_GATE_DATA_ROWS = 400
_BUNDLE_FILES = (MANIFEST_NAME, FP32_FILE, FP16_FILE, INT8_FILE, "text_encoder.onnx", "tokenizer.json", PARITY_FILE,
                 IMAGE_ONNX, SLOWFAST_ONNX, AUDIO_ONNX)
CLIP_TEXT_EXPECTED = (
    "CLIP ViT-B/32 text transformer (openai/clip-vit-base-patch32): last_hidden_state after the final "
    "layer norm, 512-d per token, not projected (the QVHighlights clip_text_features)"
)
OUTPUT_SEMANTICS = {
    "pred_logits": "(batch, num_queries, 2) class logits per moment query; softmax over the last axis, "
    "index 0 = foreground (a moment), index 1 = background",
    "pred_spans": "(batch, num_queries, 2) moment spans as (center, width), normalised to the row's video "
    "length in [0, 1]; seconds = (center -/+ width / 2) * num_valid_clips * clip_length_s",
    "saliency_scores": "(batch, video_clips) highlight score per clip (higher = more salient, unbounded), "
    "after MR2HD refinement; values at padded clips carry no meaning",
}


class VerificationError(RuntimeError):
    """A bundle is not what its manifest says (missing file, sha256 mismatch, wrong graph I/O)."""


def build_timestamp(source_date_epoch: str | None = None) -> str:
    """``created_at`` of a bundle: ``SOURCE_DATE_EPOCH`` (argument, else environment) when set, else now (UTC).

    Raises:
        ValueError: SOURCE_DATE_EPOCH is not a non-negative integer number of seconds.
    """
    value = source_date_epoch if source_date_epoch is not None else os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return datetime.now(UTC).isoformat(timespec="seconds")
    if not value.strip().isdigit():
        raise ValueError(f"SOURCE_DATE_EPOCH={value!r}: give whole seconds since 1970-01-01 UTC, e.g. 1767225600")
    return datetime.fromtimestamp(int(value), UTC).isoformat(timespec="seconds")


def _log(message: str, progress: bool) -> None:
    if progress:
        tqdm.write(message, file=sys.stderr)


def export_bundle(
    checkpoint: Path,
    out_dir: Path,
    *,
    fp16: bool = False,
    text_encoder_dir: Path | None = None,
    opset: int | None = None,
    video_groups: Sequence[VideoFeatureGroup] | None = None,
    fixtures_dir: Path | None = None,
    num_random_cases: int = 50,
    run_parity: bool = True,
    thresholds: Thresholds | None = None,
    untrained: bool = False,
    notes: Sequence[str] = (),
    progress: bool = False,
    image_encoder_dir: Path | None = None,
    slowfast: LoadedSlowFast | None = None,
    audio_groups: Sequence[AudioFeatureGroup] | None = None,
    pann: LoadedPann | None = None,
    int8: bool = False,
    int8_mode: Int8Mode = "static",
    int8_data=None,
    created_at: str | None = None,
) -> Manifest:
    """Export ``checkpoint`` into the bundle directory ``out_dir`` and check it.

    Args:
        checkpoint: official, Lighthouse or trdetr-service checkpoint.
        out_dir: bundle directory (created; bundle files already there are replaced).
        fp16: also write ``model.fp16.onnx`` (fp32 I/O, sensitive ops in fp32).
        text_encoder_dir: local Hugging Face CLIP directory; writes text_encoder.onnx + tokenizer.json.
        opset: ONNX opset (default 18).
        video_groups: ordered video feature groups; default from the checkpoint format.
        fixtures_dir: official golden fixture directory (``cases.npz``) to compare with as well.
        num_random_cases: random input batches for the gates (>= 50 for a release).
        run_parity: False skips every gate (fast, for tests that only need a bundle).
        thresholds: gate pass marks (default :class:`Thresholds`).
        untrained: mark the bundle as random-weight (demo) in the manifest.
        notes: extra human notes for the manifest.
        progress: print progress bars and steps to stderr.
        image_encoder_dir: local Hugging Face CLIP directory; writes image_encoder.onnx for group "clip".
        slowfast: a loaded SlowFast network (``model_export.slowfast.load_slowfast``); writes slowfast.onnx
            for group "slowfast".
        audio_groups: ordered audio feature groups of an audio checkpoint; default from its format
            (official: ``pann`` + TEF, Lighthouse: ``pann`` without TEF; see ``layouts.resolve_audio_layout``).
        pann: a loaded PANN Cnn14 (``model_export.pann.load_pann``); writes audio_encoder.onnx for the audio
            group "pann" and gates it against torch.
        int8: also write ``model.int8.onnx`` (CPU graph, int8 weight MatMuls, float32 I/O) and gate it.
        int8_mode: "static" (QDQ, calibrated) or "dynamic" (see ``model_export.export.int8``).
        int8_data: labelled feature dataset (``training.dataset.DatasetConfig``) in the model's layout: a
            quarter of its rows calibrate the int8 graph, the rest are gated (top-1, saliency, R1@0.5).
        created_at: ISO timestamp for manifest.json and parity.json (default :func:`build_timestamp`).
    Returns:
        the written Manifest. Raises ParityError (after writing parity.json) when a gate fails.
    """
    started = time.perf_counter()
    created_at = created_at or build_timestamp()
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    opset = opset or DEFAULT_OPSET
    thresholds = thresholds or Thresholds()
    steps = tqdm(total=6, desc="export", disable=not progress, file=sys.stderr, unit="step")
    steps.set_postfix_str("reading checkpoint")
    loaded = read_checkpoint(checkpoint)
    model, config = load_checkpoint(checkpoint)
    layout = resolve_video_layout(loaded.format, config.v_feat_dim, config.use_tef, list(video_groups or []),
                                  recorded=loaded.raw_opt.get("video_feature_groups"))
    audio = resolve_audio_layout(loaded.format, config.a_feat_dim, config.use_tef, list(audio_groups or []),
                                 recorded=loaded.raw_opt.get("audio_feature_groups"))
    if layout.source == "unknown":
        _log(f"warning: {layout.note}", True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in _BUNDLE_FILES:
        (out_dir / name).unlink(missing_ok=True)
    steps.update()

    steps.set_postfix_str(FP32_FILE)
    export_trdetr(model, config.t_feat_dim, config.vid_input_dim, out_dir / FP32_FILE, opset)
    optimise_graph(out_dir / FP32_FILE)  # exact standard-ONNX rewrites; the fp32 gates below check the result
    steps.update()
    steps.set_postfix_str(FP16_FILE if fp16 else "no fp16")
    fp32_ops = convert_to_fp16(out_dir / FP32_FILE, out_dir / FP16_FILE) if fp16 else None
    spec = _input_spec(config, layout, loaded.raw_opt, audio)
    int8_info = _write_int8(out_dir, spec, int8_mode, int8_data) if int8 else None
    store_exact_fp16_weights(out_dir / FP32_FILE)  # lossless; after the fp16 conversion read the plain graph
    steps.update()
    steps.set_postfix_str("text encoder" if text_encoder_dir else "no text encoder")
    text = export_text_encoder(text_encoder_dir, out_dir, opset) if text_encoder_dir else None
    if text is not None and text.hidden_size != config.t_feat_dim:
        raise ValueError(
            f"text encoder in {text_encoder_dir} outputs {text.hidden_size}-d tokens but the model takes "
            f"t_feat_dim={config.t_feat_dim}: pass the encoder the model was trained with"
        )
    steps.update()
    steps.set_postfix_str("video encoders" if image_encoder_dir or slowfast else "no video encoder")
    encoders = [export_image_encoder(image_encoder_dir, out_dir, opset)] if image_encoder_dir else []
    encoders += [export_slowfast(slowfast, out_dir, opset)] if slowfast else []
    if untrained:
        encoders = [e.model_copy(update={"weights": e.weights.model_copy(update={"untrained": True})}) for e in encoders]
    layout = attach_encoders(layout, encoders)
    if pann is not None:
        pann_spec = export_pann(pann, out_dir, opset, config.clip_length)
        if untrained:
            pann_spec = pann_spec.model_copy(update={"weights": pann_spec.weights.model_copy(update={"untrained": True})})
        audio = attach_audio_encoder(audio, pann_spec)
    for name in _BUNDLE_FILES:  # fp16/int8 converters and re-saves too: no path, no stack trace in any graph
        if name.endswith(".onnx") and (out_dir / name).is_file():
            strip_build_metadata_file(out_dir / name)
    steps.update()

    steps.set_postfix_str("parity" if run_parity else "parity skipped")
    spec = _input_spec(config, layout, loaded.raw_opt, audio)
    report = _parity_report(
        out_dir, model, config, spec, fp16, text_encoder_dir, fixtures_dir,
        num_random_cases if run_parity else 0, thresholds, run_parity, progress,
        image_encoder_dir=image_encoder_dir, slowfast=slowfast, pann=pann, int8=int8, int8_data=int8_data,
        created_at=created_at,
    )
    steps.update()
    steps.close()
    (out_dir / PARITY_FILE).write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        raise ParityError(report["failure_message"] + f"\nfull report: {out_dir / PARITY_FILE} (no manifest written)")

    manifest = Manifest(
        created_at=created_at,
        source=SourceCheckpoint(
            file_name=checkpoint.name, sha256=sha256_file(checkpoint),
            checkpoint_format=loaded.format, epoch=loaded.epoch,
        ),
        config=config.to_dict(),
        onnx=OnnxSpec(
            opset=opset, fp32_file=FP32_FILE, fp16_file=FP16_FILE if fp16 else None, fp16_ops_kept_fp32=fp32_ops,
            int8_file=INT8_FILE if int8_info else None, int8_quantization=int8_info.describe() if int8_info else None,
        ),
        preprocessing=_preprocessing(config, layout, loaded.raw_opt, text, audio),
        outputs=OUTPUT_SEMANTICS,
        files=_file_entries(out_dir),
        parity=_manifest_parity(report),
        untrained=untrained,
        notes=[*([layout.note] if layout.source == "unknown" else []), *notes],
    )
    manifest.dump(out_dir)
    _log(f"wrote {out_dir} in {time.perf_counter() - started:.1f} s", progress)
    return manifest


def _write_int8(out_dir: Path, spec: InputSpec, mode: Int8Mode, data) -> Int8Info:
    """Quantize the fp32 graph (before its weights are stored as fp16) into ``model.int8.onnx``.

    Calibration rows, never the gates': the dataset's calibration rows when a dataset is given (random
    features would stretch the activation ranges real inputs never reach), else seeded random batches (seed 1;
    the gates use seed 0) built through the preprocessing contract.
    """
    if data is not None:
        cases = dataset_cases(data, INT8_CALIBRATION_ROWS, calibration=True)
    else:
        cases = random_cases(spec, 25, seed=1)[9:]  # 16 batches of random lengths, not the gates' edge shapes
    return quantize_int8(out_dir / FP32_FILE, out_dir / INT8_FILE, calibration_batches(cases, INT8_CALIBRATION_ROWS),
                         mode=mode)


def _int8_gates(bundle_dir: Path, fp32_reference, cases: list, thresholds: Thresholds, reference_label: str,
                data, manifest_pre: dict, progress: bool) -> list:
    """int8 graph vs the fp32 reference on the gate cases, and R1@0.5 of both ORT graphs on ``data``."""
    int8 = ort_runner(make_session(str(bundle_dir / INT8_FILE), CPU))
    gates = [int8_gate(f"int8 ORT vs {reference_label} (CPUExecutionProvider)", fp32_reference, int8, cases,
                       provider=CPU, thresholds=thresholds, reference_label=reference_label, progress=progress)]
    if data is not None:
        fp32 = ort_runner(make_session(str(bundle_dir / FP32_FILE), CPU))
        fp32_r1, queries = r1_at_05(fp32, data, **manifest_pre)
        int8_r1, _ = r1_at_05(int8, data, **manifest_pre)
        gates.append(r1_gate("int8 R1@0.5 vs fp32 (CPUExecutionProvider)", fp32_r1, int8_r1, queries,
                             thresholds=thresholds, dataset=Path(data.annotation_path).name))
    return gates


def _input_spec(config: TRDETRConfig, layout: VideoLayout, raw_opt: dict | None,
                audio: AudioLayout | None = None, normalize_audio: bool | None = None) -> InputSpec:
    """The model's input contract, for building random parity inputs.

    Audio is L2-normalised like the video (official ``normalize_v`` covers both; Lighthouse always
    normalises both).
    """
    raw_opt = raw_opt or {}
    normalize_video = not raw_opt.get("no_norm_vfeat", False)
    return InputSpec(
        video_group_dims=[g.dim for g in layout.groups],
        text_dim=config.t_feat_dim,
        use_tef=config.use_tef,
        normalize_video=normalize_video,
        normalize_text=not raw_opt.get("no_norm_tfeat", False),
        max_text_tokens=config.max_q_l,
        audio_group_dims=[g.dim for g in audio.groups] if audio else (),
        audio_tef=bool(audio and audio.tef),
        normalize_audio=normalize_video if normalize_audio is None else normalize_audio,
        max_video_clips=int(config.max_v_l),
    )


def _embedding_group(groups: list, embed_dim: int | None) -> str | None:
    """The video group in the text embedding's space: the CLIP image group (bundled CLIP image encoder, or named
    ``clip`` as in the official and Lighthouse layouts) when its width is the projection's; else None."""
    if embed_dim is None:
        return None
    for group in groups:
        kind = getattr(group.encoder, "kind", None)
        if group.dim == embed_dim and (kind == "clip_image" or (kind is None and group.name == "clip")):
            return group.name
    return None


def _preprocessing(config: TRDETRConfig, layout: VideoLayout, raw_opt: dict | None, text,
                   audio: AudioLayout | None = None) -> PreprocessingContract:
    """The manifest's preprocessing contract (see trdetr_common.manifest.PreprocessingContract)."""
    spec = _input_spec(config, layout, raw_opt, audio)
    expected = CLIP_TEXT_EXPECTED if config.t_feat_dim == 512 else (
        f"{config.t_feat_dim}-d per-token text features of the encoder the checkpoint was trained with "
        "(not recorded in the checkpoint)"
    )
    encoder = TextEncoderSpec(
        expected=expected,
        onnx_file=text.onnx_file if text else None,
        tokenizer_file=text.tokenizer_file if text else None,
        context_length=text.context_length if text else None,
        text_cleaning=OPENAI_CLIP,
        embedding_output=EMBED_OUTPUT if text and text.embed_dim else None,
        embedding_group=_embedding_group(layout.groups, text.embed_dim if text else None),
    )
    return PreprocessingContract(
        clip_length_s=float(config.clip_length),
        video_groups=layout.groups,
        video_groups_source=layout.source,
        video_groups_note=layout.note,
        l2_normalize_video=spec.normalize_video,
        tef=config.use_tef,
        video_input_dim=config.vid_input_dim,
        text_dim=config.t_feat_dim,
        max_text_tokens=config.max_q_l,
        l2_normalize_text=spec.normalize_text,
        max_video_clips=config.max_v_l,
        text_encoder=encoder,
        audio_groups=audio.groups if audio else [],
        audio_tef=bool(audio and audio.tef),
        l2_normalize_audio=spec.normalize_audio,
        audio_groups_source=audio.source if audio else None,
        audio_alignment=AUDIO_ALIGNMENT if audio else None,
    )


def _file_entries(bundle_dir: Path) -> dict[str, FileEntry]:
    """sha256 and size of every bundle file but the manifest."""
    return {
        name: file_entry(bundle_dir / name)
        for name in _BUNDLE_FILES
        if name != MANIFEST_NAME and (bundle_dir / name).is_file()
    }


def _environment() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "machine": platform.machine(),
    }


def _parity_report(
    bundle_dir: Path,
    model,
    config: TRDETRConfig,
    spec: InputSpec,
    fp16: bool,
    text_encoder_dir: Path | None,
    fixtures_dir: Path | None,
    num_random_cases: int,
    thresholds: Thresholds,
    run_parity: bool,
    progress: bool,
    *,
    image_encoder_dir: Path | None = None,
    slowfast: LoadedSlowFast | None = None,
    pann: LoadedPann | None = None,
    int8: bool = False,
    int8_data=None,
    created_at: str | None = None,
) -> dict:
    """Run the model gates (and the text and video encoder checks) and assemble parity.json's content."""
    report: dict = {
        "created_at": created_at or build_timestamp(),
        "ran": run_parity,
        "environment": _environment(),
        "thresholds": asdict(thresholds),
        "num_random_cases": num_random_cases,
        "random_seed": 0,
        "fixtures_dir": Path(fixtures_dir).name if fixtures_dir else None,  # a name: no path of this machine
    }
    if not run_parity:
        report.update(passed=True, gates=[], providers=[], skipped=["run_parity=False: no gate was run"])
        return report
    randoms, fixtures = build_cases(spec, config.vid_input_dim, num_random_cases, fixtures_dir)
    fp16_path = bundle_dir / FP16_FILE if fp16 else None
    run = run_gates(bundle_dir / FP32_FILE, fp16_path, model, randoms, fixtures, thresholds, progress=progress)
    if int8:
        data_cases = dataset_cases(int8_data, INT8_GATE_DATA_ROWS, calibration=False) if int8_data else []
        shapes = {"video_dim": config.vid_input_dim, "text_dim": config.t_feat_dim,
                  "clip_length": float(config.clip_length), "window": int(config.max_v_l)}
        run.gates += _int8_gates(bundle_dir, memoize(torch_runner(model)), randoms + fixtures + data_cases,
                                 thresholds, "torch", int8_data, shapes, progress)
    text = check_text_encoder(text_encoder_dir, bundle_dir, progress=progress) if text_encoder_dir else None
    video = {}
    if image_encoder_dir:
        video["image_encoder"] = check_image_encoder(image_encoder_dir, bundle_dir, atol=thresholds.fp32_atol)
    if slowfast:
        video["slowfast"] = check_slowfast(slowfast.model, bundle_dir, atol=thresholds.fp32_atol)
    if pann:
        samples = round(config.clip_length * pann.model.config.sample_rate)
        video["audio_encoder"] = check_pann(pann.model, bundle_dir, samples, atol=thresholds.fp32_atol)
    return _finish_report(report, run, text, video)


def _finish_report(report: dict, run: GateRun, text: dict | None, video: dict[str, dict] | None = None) -> dict:
    """Add the gate results, the pass flag and the failure message to a report."""
    report.update(
        gates=[g.to_dict() for g in run.gates], providers=run.providers, skipped=run.skipped, text_encoder=text
    )
    if video:
        report["video_encoders"] = video
    try:
        raise_on_failure(run.gates)
        failures = []
    except ParityError as error:
        failures = [str(error)]
    if text is not None and not text["passed"]:
        failures.append("text encoder checks failed:\n  " + "\n  ".join(text["failures"]))
    for name, check in (video or {}).items():
        if not check["passed"]:
            failures.append(f"{name} checks failed:\n  " + "\n  ".join(check["failures"]))
    report["passed"] = not failures
    report["failure_message"] = "\n".join(failures) or None
    return report


def _manifest_parity(report: dict) -> dict:
    """The manifest's parity summary (the full per-case report stays in parity.json)."""
    summary = summarize(report.get("gates", []))
    summary.update(ran=report["ran"], providers=report["providers"], skipped=report["skipped"],
                   num_random_cases=report["num_random_cases"], report_file=PARITY_FILE)
    if report.get("text_encoder"):
        text = report["text_encoder"]
        summary["text_encoder"] = {
            "passed": text["passed"], "max_abs_diff": text["max_abs_diff"],
            "tokenizer_ids_equal": text["tokenizer_ids_equal"], "queries": len(text["queries"]),
            "text_embeds_max_abs_diff": text.get("text_embeds_max_abs_diff"),
        }
    for name, check in report.get("video_encoders", {}).items():
        summary[name] = {"passed": check["passed"], "max_abs_diff": check["max_abs_diff"], "reference": check["reference"]}
    return summary


def verify_bundle(
    bundle_dir: Path,
    checkpoint: Path | None = None,
    fixtures_dir: Path | None = None,
    *,
    text_encoder_dir: Path | None = None,
    num_random_cases: int = 50,
    thresholds: Thresholds | None = None,
    progress: bool = False,
    slowfast: LoadedSlowFast | None = None,
    pann: LoadedPann | None = None,
    int8_data=None,
) -> dict:
    """Re-check an existing bundle; returns the report, raises on any failure.

    Always: the manifest validates, every file's sha256 matches, the graphs have the declared I/O,
    symbolic batch/length axes and torch-semantics GRUs; the text encoder and tokenizer run.
    With ``checkpoint`` (its sha256 must be the manifest's source): torch-vs-ORT fp32 and fp16 gates.
    Without it: the fp16 graph is gated against the bundle's own fp32 graph.
    With ``fixtures_dir``: ORT against the official golden outputs.
    A bundled int8 graph is gated against torch (or the fp32 graph), with ``int8_data`` also on R1@0.5.
    Bundled video encoders run once on a dummy input; with ``text_encoder_dir`` (a full CLIP directory) the
    image encoder is also gated against transformers, with ``slowfast`` the SlowFast graph against torch.

    Raises:
        VerificationError: a file is missing or altered, or a graph does not match the manifest.
        ParityError: a parity gate failed.
    """
    bundle_dir = Path(bundle_dir)
    thresholds = thresholds or Thresholds()
    manifest = _load_manifest(bundle_dir)
    problems = verify_files(bundle_dir, manifest) + _graph_problems(bundle_dir, manifest)
    if problems:
        raise VerificationError(f"bundle {bundle_dir} does not match its manifest:\n  " + "\n  ".join(problems))
    _log(f"{bundle_dir}: manifest valid, {len(manifest.files)} files match their sha256", progress)
    model = None
    if checkpoint is not None:
        if (actual := sha256_file(checkpoint)) != manifest.source.sha256:
            raise VerificationError(
                f"checkpoint {checkpoint} has sha256 {actual}, but the bundle was exported from "
                f"{manifest.source.file_name} with sha256 {manifest.source.sha256}: pass that checkpoint"
            )
        model, _ = load_checkpoint(checkpoint)
    config = TRDETRConfig.from_opt(manifest.config)
    pre = manifest.preprocessing
    layout = VideoLayout(pre.video_groups, pre.video_groups_source)
    audio = AudioLayout(pre.audio_groups, pre.audio_tef, pre.audio_groups_source or "official", "") \
        if pre.audio_groups else None
    spec = _input_spec(config, layout, {
        "no_norm_vfeat": not pre.l2_normalize_video,
        "no_norm_tfeat": not pre.l2_normalize_text,
    }, audio, pre.l2_normalize_audio)
    randoms, fixtures = build_cases(spec, config.vid_input_dim, num_random_cases, fixtures_dir)
    fp16_path = bundle_dir / manifest.onnx.fp16_file if manifest.onnx.fp16_file else None
    run = run_gates(bundle_dir / manifest.onnx.fp32_file, fp16_path, model, randoms, fixtures, thresholds,
                    progress=progress)
    if manifest.onnx.int8_file:
        reference, label = ((memoize(torch_runner(model)), "torch") if model is not None else
                            (memoize(ort_runner(make_session(str(bundle_dir / manifest.onnx.fp32_file)))), "ORT fp32"))
        shapes = {"video_dim": config.vid_input_dim, "text_dim": config.t_feat_dim,
                  "clip_length": float(config.clip_length), "window": int(config.max_v_l)}
        data_cases = dataset_cases(int8_data, INT8_GATE_DATA_ROWS, calibration=False) if int8_data else []
        run.gates += _int8_gates(bundle_dir, reference, randoms + fixtures + data_cases, thresholds, label,
                                 int8_data, shapes, progress)
    text = _verify_text_encoder(bundle_dir, manifest, text_encoder_dir, progress)
    video = check_video_encoders_run(bundle_dir, manifest)
    if text_encoder_dir is not None and (bundle_dir / IMAGE_ONNX).is_file() and "vision" in clip_towers(text_encoder_dir):
        video["image_encoder"] = check_image_encoder(text_encoder_dir, bundle_dir, atol=thresholds.fp32_atol)
    if slowfast is not None and (bundle_dir / SLOWFAST_ONNX).is_file():
        video["slowfast_parity"] = check_slowfast(slowfast.model, bundle_dir, atol=thresholds.fp32_atol)
    for group in pre.audio_groups:
        if group.encoder is not None:
            video[group.name] = check_audio_encoder_runs(bundle_dir, group.encoder, group.dim)
            if pann is not None:
                video["audio_encoder_parity"] = check_pann(pann.model, bundle_dir, group.encoder.clip_samples,
                                                           atol=thresholds.fp32_atol)
    report = {"bundle": str(bundle_dir), "ran": True, "files_verified": sorted(manifest.files),
              "environment": _environment(), "thresholds": asdict(thresholds),
              "num_random_cases": num_random_cases}
    report = _finish_report(report, run, text, video)
    if not report["passed"]:
        raise ParityError(report["failure_message"])
    return report


def _load_manifest(bundle_dir: Path) -> Manifest:
    """Load and validate ``manifest.json``, turning every problem into a VerificationError."""
    path = bundle_dir / MANIFEST_NAME
    if not path.is_file():
        raise VerificationError(f"{path} not found: {bundle_dir} is not a bundle written by trdetr-export")
    try:
        return Manifest.load(bundle_dir)
    except (json.JSONDecodeError, pydantic.ValidationError) as error:
        raise VerificationError(f"{path} is not a valid manifest: {error}") from error


def _graph_problems(bundle_dir: Path, manifest: Manifest) -> list[str]:
    """Graph-level checks of the model graphs against the manifest's declared I/O."""
    problems = []
    for name in filter(None, [manifest.onnx.fp32_file, manifest.onnx.fp16_file, manifest.onnx.int8_file]):
        if name not in manifest.files:
            problems.append(f"{name} is named in manifest.onnx but not listed (with its sha256) in manifest.files")
            continue
        graph = onnx.load(str(bundle_dir / name))
        inputs = [i.name for i in graph.graph.input]
        outputs = [o.name for o in graph.graph.output]
        if inputs != manifest.onnx.input_names or outputs != manifest.onnx.output_names:
            problems.append(f"{name} has inputs {inputs} / outputs {outputs}, the manifest declares "
                            f"{manifest.onnx.input_names} / {manifest.onnx.output_names}")
        if inputs == TRDETR_INPUTS and outputs == TRDETR_OUTPUTS:
            problems += [f"{name}: {p}" for p in dynamic_axis_problems(graph, TRDETR_DYNAMIC_AXES)]
        problems += [f"{name}: {p}" for p in gru_problems(graph)]
    return problems


def _verify_text_encoder(bundle_dir: Path, manifest: Manifest, hf_dir: Path | None, progress: bool) -> dict | None:
    """Full torch parity with ``hf_dir``; otherwise check the bundled tokenizer + encoder run sanely."""
    spec = manifest.preprocessing.text_encoder
    if spec.onnx_file is None:
        return None
    if hf_dir is not None:
        return check_text_encoder(hf_dir, bundle_dir, progress=progress, cleaning=spec.text_cleaning)
    tokenizer = QueryTokenizer(bundle_dir / spec.tokenizer_file, spec.text_cleaning)
    session = ort.InferenceSession(str(bundle_dir / spec.onnx_file), providers=["CPUExecutionProvider"])
    batch = encode_batch(tokenizer, CHECK_QUERIES, pad_id=0)
    states = session.run([TEXT_OUTPUT], batch)[0]
    failures = []
    if batch["input_ids"].shape[1] > (spec.context_length or 10**9):
        failures.append(f"tokenizer.json produced {batch['input_ids'].shape[1]} tokens > context {spec.context_length}")
    if states.shape != (*batch["input_ids"].shape, manifest.preprocessing.text_dim):
        failures.append(f"text encoder output shape {states.shape} is not (batch, tokens, "
                        f"{manifest.preprocessing.text_dim})")
    if not np.isfinite(states).all():
        failures.append("text encoder output has NaN or infinite values")
    if spec.embedding_output is not None:
        embeds = session.run([spec.embedding_output], batch)[0]
        if embeds.ndim != 2 or len(embeds) != len(CHECK_QUERIES) or not np.allclose(
                np.linalg.norm(embeds, axis=1), 1.0, atol=1e-4):
            failures.append(f"text encoder output {spec.embedding_output} {embeds.shape} is not one L2-normalised "
                            "row per query")
    return {"passed": not failures, "failures": failures, "torch_parity": "skipped: no --text-encoder DIR given",
            "max_abs_diff": None, "tokenizer_ids_equal": None, "queries": list(CHECK_QUERIES)}
