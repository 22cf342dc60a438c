"""CLIP text encoder -> ``text_encoder.onnx`` + ``tokenizer.json``, with parity checks.

The official QVHighlights query features (Moment-DETR's extraction, reused by TR-DETR and
Lighthouse) are the CLIP ViT-B/32 text transformer's token states after the final layer norm:
``last_hidden_state`` (L, 512), *not* passed through ``text_projection``, for every token the
tokenizer produced (``<|startoftext|>``, the query tokens, ``<|endoftext|>``: Lighthouse keeps the
rows where the token id is non-zero, i.e. the non-padding ones). The dataset then keeps the first
``max_q_l`` (32) rows and L2-normalises each. The text transformer is causal, so those first rows
do not depend on tokens after them.

The bundled graph takes ``input_ids`` and ``attention_mask`` (int64, (B, L)) and returns
``last_hidden_state`` (B, L, D) and, when the CLIP directory holds the text projection (a full CLIP model such
as ``openai/clip-vit-base-patch32``, or a ``CLIPTextModelWithProjection``), a second output ``text_embeds``
(B, P): the projected embedding at the ``<|endoftext|>`` token, L2-normalised -- what CLIP's
``get_text_features`` / ``encode_text`` give, divided by their norm. It lives in the space of CLIP's image
embeddings, so the service compares it with the videos' CLIP image group to pick search candidates
(``service.stage1``). ``tokenizer.json`` truncates to the context length (77 with
``<|endoftext|>`` kept last) and does not pad. A query is cleaned as OpenAI CLIP's tokenizer cleans it
(``trdetr_common.text``, recorded as the manifest's ``text_cleaning``) before ``tokenizer.json`` sees it; the
checks below tokenize through the same ``QueryTokenizer`` the service uses.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from trdetr_common.text import OPENAI_CLIP, QueryTokenizer, text_cleaner

from .onnx_export import export_module, store_exact_fp16_weights

TEXT_ONNX = "text_encoder.onnx"
TOKENIZER_JSON = "tokenizer.json"
TEXT_INPUTS = ["input_ids", "attention_mask"]
TEXT_OUTPUT = "last_hidden_state"
EMBED_OUTPUT = "text_embeds"
TEXT_DYNAMIC_AXES = {
    "input_ids": {0: "batch", 1: "tokens"},
    "attention_mask": {0: "batch", 1: "tokens"},
    "last_hidden_state": {0: "batch", 1: "tokens"},
    "text_embeds": {0: "batch"},
}

# Queries for the tokenizer and encoder checks: casing, punctuation, whitespace, unicode, numbers,
# contractions, emoji, what CLIP's cleaning changes (curly quotes, HTML entities, mojibake), and one far
# longer than the 77-token context.
CHECK_QUERIES: tuple[str, ...] = (
    "A man is cooking pasta in the kitchen.",
    "WOMAN shows her NEW shoes!!!",
    "dog runs... then? stops; (quickly) - 'fetch'",
    "  extra   spaces\tand\ttabs\nnewline  ",
    "Café crème brûlée at the naïve façade",
    "東京の街を歩く人々",
    "Ünïcödé ümlauts and émojis 🎉🐶 ok",
    "it's 3:45 pm, they're at 10,000 ft",
    "x",
    "“Quoted” ‘text’ &amp; Tom &amp;amp; Jerry &lt;3 cafÃ©",
    "a very long query " + " ".join(f"word{i} and more, punctuation!" for i in range(60)),
)


class TextEncoderError(RuntimeError):
    """The text encoder export or its checks failed; the message says which check."""


@dataclass(frozen=True)
class TextEncoderExport:
    """What was written: file names, output width, truncation length and the projected embedding's width
    (``embed_dim`` None: the directory had no text projection, so there is no ``text_embeds`` output)."""

    onnx_file: str
    tokenizer_file: str
    hidden_size: int
    context_length: int
    embed_dim: int | None = None


class LastHiddenState(nn.Module):
    """CLIPTextModel -> its final-layer-normed token states (B, L, D), nothing else."""

    def __init__(self, model: CLIPTextModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class StatesAndEmbeds(nn.Module):
    """CLIPTextModelWithProjection -> token states (B, L, D) and the L2-normalised projected embedding (B, P)."""

    def __init__(self, model: CLIPTextModelWithProjection) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, normalised_embeds(out.text_embeds)


def normalised_embeds(embeds: torch.Tensor) -> torch.Tensor:
    """(B, P) -> each row divided by its L2 norm (CLIP's own normalisation before its logits)."""
    return embeds / embeds.norm(dim=-1, keepdim=True)


def load_hf_text_encoder(hf_dir: str | Path) -> tuple[CLIPTextModel | CLIPTextModelWithProjection, CLIPTokenizer]:
    """Load the text half of a local Hugging Face CLIP directory (no network) in eval mode.

    With the text projection when the directory holds it (a full CLIP model or a ``CLIPTextModelWithProjection``);
    a plain ``CLIPTextModel`` directory gives the model without it (no ``text_embeds`` output then).
    """
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise TextEncoderError(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    with_projection, info = CLIPTextModelWithProjection.from_pretrained(hf_dir, local_files_only=True,
                                                                        output_loading_info=True)
    if any(key.startswith("text_projection") for key in info["missing_keys"]):
        model: CLIPTextModel | CLIPTextModelWithProjection = CLIPTextModel.from_pretrained(
            hf_dir, local_files_only=True)
    else:
        model = with_projection
    tokenizer = CLIPTokenizer.from_pretrained(hf_dir, local_files_only=True)
    return model.eval(), tokenizer


def has_projection(model: CLIPTextModel | CLIPTextModelWithProjection) -> bool:
    return isinstance(model, CLIPTextModelWithProjection)


def context_length(model: CLIPTextModel, tokenizer: CLIPTokenizer) -> int:
    """Truncation length: the tokenizer's limit, capped by the model's position embeddings."""
    limit = model.config.max_position_embeddings
    return int(min(limit, tokenizer.model_max_length or limit))


def write_tokenizer_json(tokenizer: CLIPTokenizer, path: str | Path, max_length: int) -> None:
    """Save the fast tokenizer with truncation to ``max_length`` (specials kept) and no padding."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(max_length=max_length)
    backend.save(str(path))


def export_text_encoder(hf_dir: str | Path, out_dir: str | Path, opset: int) -> TextEncoderExport:
    """Write ``text_encoder.onnx`` and ``tokenizer.json`` for the CLIP text model in ``hf_dir``."""
    model, tokenizer = load_hf_text_encoder(hf_dir)
    length = context_length(model, tokenizer)
    encoded = tokenizer(["a photo of a dog", "two"], padding=True, return_tensors="pt")
    projected = has_projection(model)
    export_module(
        StatesAndEmbeds(model) if projected else LastHiddenState(model),
        (encoded["input_ids"], encoded["attention_mask"]),
        Path(out_dir) / TEXT_ONNX,
        input_names=TEXT_INPUTS,
        output_names=[TEXT_OUTPUT, EMBED_OUTPUT] if projected else [TEXT_OUTPUT],
        dynamic_axes=TEXT_DYNAMIC_AXES if projected else {k: v for k, v in TEXT_DYNAMIC_AXES.items()
                                                         if k != EMBED_OUTPUT},
        opset=opset,
    )
    store_exact_fp16_weights(Path(out_dir) / TEXT_ONNX)
    write_tokenizer_json(tokenizer, Path(out_dir) / TOKENIZER_JSON, length)
    embed_dim = int(model.config.projection_dim) if projected else None
    return TextEncoderExport(TEXT_ONNX, TOKENIZER_JSON, int(model.config.hidden_size), length, embed_dim)


def encode_batch(tokenizer: QueryTokenizer, queries: Sequence[str], pad_id: int) -> dict[str, np.ndarray]:
    """Tokenize (cleaning first) and right-pad into int64 ``input_ids`` / ``attention_mask`` (B, L)."""
    encodings = tokenizer.encode_batch(list(queries))
    width = max(len(token_ids) for token_ids in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, token_ids in enumerate(encodings):
        ids[row, : len(token_ids)] = token_ids
        mask[row, : len(token_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def check_text_encoder(
    hf_dir: str | Path,
    bundle_dir: str | Path,
    *,
    queries: Sequence[str] = CHECK_QUERIES,
    atol: float = 1e-4,
    progress: bool = False,
    cleaning: str = OPENAI_CLIP,
) -> dict:
    """Tokenizer equality and torch-vs-ORT encoder parity on ``queries``.

    The bundled ``tokenizer.json`` behind the service's ``QueryTokenizer`` (``cleaning`` first) must give
    the same ids as the transformers CLIPTokenizer, with ``truncation=True, max_length=context``, on the
    cleaned query for every query; the ORT graph on those ids must match the torch model within ``atol``
    on every non-padding token.

    Returns:
        report dict with ``passed``, ``failures`` and per-query numbers.
    """
    model, hf_tokenizer = load_hf_text_encoder(hf_dir)
    length = context_length(model, hf_tokenizer)
    bundled = QueryTokenizer(Path(bundle_dir) / TOKENIZER_JSON, cleaning)
    clean = text_cleaner(cleaning)
    session = ort.InferenceSession(str(Path(bundle_dir) / TEXT_ONNX), providers=["CPUExecutionProvider"])
    failures, rows = [], []
    for query in tqdm(queries, desc="text encoder parity", disable=not progress, file=sys.stderr, leave=False):
        expected = hf_tokenizer(clean(query), truncation=True, max_length=length)["input_ids"]
        got = bundled.encode_batch([query])[0]
        if got != expected:
            failures.append(
                f"tokenizer.json ids differ from CLIPTokenizer for query {query[:40]!r}: "
                f"{len(got)} tokens {got[:8]}... vs {len(expected)} tokens {expected[:8]}..."
            )
        # the encoder is checked on the reference ids, independently of the tokenizer check
        diff = _encoder_diff(model, session, hf_tokenizer, [clean(query)], length)
        if diff > atol:
            failures.append(f"text encoder output last_hidden_state differs by {diff:.3g} > {atol:g} for query {query[:40]!r}")
        rows.append({"query": query, "tokens": len(expected), "ids_equal": got == expected, "max_abs_diff": diff})
    padded = _encoder_diff(model, session, hf_tokenizer, [clean(q) for q in queries], length)
    if padded > atol:
        failures.append(f"text encoder on a padded batch differs by {padded:.3g} > {atol:g} on real tokens")
    embeds = _embeds_diff(model, session, hf_tokenizer, [clean(q) for q in queries], length)
    if embeds is not None and embeds > atol:
        failures.append(f"text encoder output {EMBED_OUTPUT} differs from CLIP's normalised get_text_features by "
                        f"{embeds:.3g} > {atol:g} (padded batch of the check queries)")
    return {
        "text_embeds_max_abs_diff": embeds,
        "passed": not failures,
        "failures": failures,
        "atol": atol,
        "context_length": length,
        "max_abs_diff": max([r["max_abs_diff"] for r in rows] + [padded]),
        "padded_batch_max_abs_diff": padded,
        "tokenizer_ids_equal": all(r["ids_equal"] for r in rows),
        "queries": rows,
    }


def _encoder_diff(
    model: CLIPTextModel, session: ort.InferenceSession, tokenizer: CLIPTokenizer, queries: Sequence[str], length: int
) -> float:
    """Max |torch - ORT| over the real tokens of ``queries`` run as one right-padded batch."""
    batch = tokenizer(list(queries), truncation=True, max_length=length, padding=True, return_tensors="np")
    feed = {name: batch[name].astype(np.int64) for name in TEXT_INPUTS}
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy()
    out = session.run([TEXT_OUTPUT], feed)[0]
    return float(np.abs(ref - out)[feed["attention_mask"].astype(bool)].max())


def _embeds_diff(
    model: CLIPTextModel | CLIPTextModelWithProjection, session: ort.InferenceSession, tokenizer: CLIPTokenizer,
    queries: Sequence[str], length: int,
) -> float | None:
    """Max |torch - ORT| of the normalised projected embeddings (B, P) of ``queries`` as one right-padded batch;
    None when the model has no projection (then the graph must not have the output either)."""
    outputs = [o.name for o in session.get_outputs()]
    if not has_projection(model):
        if EMBED_OUTPUT in outputs:
            raise TextEncoderError(f"{EMBED_OUTPUT} in the graph but the CLIP directory has no text projection")
        return None
    if EMBED_OUTPUT not in outputs:
        raise TextEncoderError(f"the CLIP directory has a text projection but the graph has no {EMBED_OUTPUT} output")
    batch = tokenizer(list(queries), truncation=True, max_length=length, padding=True, return_tensors="np")
    feed = {name: batch[name].astype(np.int64) for name in TEXT_INPUTS}
    with torch.no_grad():
        ref = normalised_embeds(model(**{k: torch.from_numpy(v) for k, v in feed.items()}).text_embeds).numpy()
    out = session.run([EMBED_OUTPUT], feed)[0]
    return float(np.abs(ref - out).max())
