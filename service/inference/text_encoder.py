"""Query text -> token features with the bundle's text encoder (``tokenizers`` + ONNX Runtime).

Each text is first cleaned as the manifest's ``text_encoder.text_cleaning`` says (OpenAI CLIP's cleaning for
every CLIP bundle, old ones included: ``trdetr_common.text``), then tokenised by ``tokenizer.json``.
The bundled encoder is the CLIP text transformer: ``input_ids`` / ``attention_mask`` (B, L) int64
-> ``last_hidden_state`` (B, L, text_dim). Which rows form ``src_txt`` is the manifest's
``text_encoder.token_selection``: the rows of the real tokens (start and end tokens included,
padding dropped), the first ``max_text_tokens`` of them, L2-normalised per token when
``l2_normalize_text`` says so. Bundles whose manifest names ``text_encoder.embedding_output`` also give,
from the same run, the CLIP projected text embedding (P,) (L2-normalised): stage 1 of ``POST /v1/search``
compares it with the videos' CLIP image summaries (:mod:`service.stage1`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.errors import InvalidInput
from service.inference.session import OnnxModel
from trdetr_common.features import build_text_features
from trdetr_common.manifest import PreprocessingContract
from trdetr_common.text import QueryTokenizer


@dataclass(frozen=True)
class EncodedText:
    """One query's encoding: ``tokens`` (L, text_dim) for ``src_txt``; ``embed`` (P,) the L2-normalised CLIP
    projected text embedding, None when the bundle's encoder has no such output."""

    tokens: np.ndarray
    embed: np.ndarray | None = None


class TextEncoder:
    """Tokenise and encode a list of query texts in one ONNX Runtime run."""

    def __init__(self, bundle_dir: Path, pre: PreprocessingContract, model: OnnxModel, identity: str = "") -> None:
        spec = pre.text_encoder
        assert spec.onnx_file and spec.tokenizer_file, "TextEncoder needs a bundle with a text encoder"
        self._pre = pre
        self.model = model
        self.tokenizer = QueryTokenizer(Path(bundle_dir) / spec.tokenizer_file, spec.text_cleaning,
                                        keep_truncation=False)
        self.context_length = spec.context_length or 77
        self._identity = identity

    @property
    def identity(self) -> str:
        """What decides the encoding besides the cleaned text: the encoder and tokenizer files' sha256 and the
        token selection (for cache keys; see :mod:`service.inference.text_queries`)."""
        return self._identity

    def clean(self, text: str) -> str:
        """The text as the tokenizer sees it (the manifest's cleaning: whitespace, case, HTML entities...)."""
        return self.tokenizer.clean(text)

    def token_ids(self, cleaned: list[str], first_index: int = 0) -> list[list[int]]:
        """Token ids of already cleaned texts; 422 ``query_too_long`` (naming ``queries[first_index + i]``)
        when one has more tokens than the encoder's context length."""
        encodings = [e.ids for e in self.tokenizer.tokenizer.encode_batch(cleaned)]
        for index, token_ids in enumerate(encodings):
            if len(token_ids) > self.context_length:
                index += first_index
                raise InvalidInput(
                    f"queries[{index}] is {len(token_ids)} tokens long; the text encoder takes at most "
                    f"{self.context_length} (start and end tokens included). Shorten the query.",
                    {"index": index, "tokens": len(token_ids), "max_tokens": self.context_length},
                    code="query_too_long",
                )
        return encodings

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, both (B, L_max) int64, zero-padded on the right.

        Raises 422 when a text has more tokens than the encoder's context length.
        """
        return pad_ids(self.token_ids([self.clean(t) for t in texts]))

    @property
    def has_embedding(self) -> bool:
        """Whether the encoder also gives the CLIP projected text embedding (stage-1 search needs it)."""
        return self._pre.text_encoder.embedding_output is not None

    def encode_ids(self, encodings: list[list[int]]) -> list[EncodedText]:
        """One encoding per token-id list (one ONNX Runtime run, padded): tokens ``(L_i, text_dim)`` float32 and
        the ``(P,)`` embedding when the bundle has it."""
        return self._run(*pad_ids(encodings))

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One ``(L_i, text_dim)`` float32 feature array per text, ready for ``src_txt``."""
        return [encoded.tokens for encoded in self._run(*self.tokenize(texts))]

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> list[EncodedText]:
        pre, spec = self._pre, self._pre.text_encoder
        ids_name, mask_name = spec.input_names
        outputs = self.model.run({ids_name: ids, mask_name: mask})
        hidden = outputs[spec.output_name]
        embeds = outputs[spec.embedding_output].astype(np.float32) if spec.embedding_output else None
        return [
            EncodedText(
                build_text_features(
                    hidden[row, : int(mask[row].sum())],
                    normalize=pre.l2_normalize_text,
                    max_tokens=pre.max_text_tokens,
                    eps=pre.l2_eps,
                ),
                None if embeds is None else np.ascontiguousarray(embeds[row]),
            )
            for row in range(len(ids))
        ]


def pad_ids(encodings: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, both (B, L_max) int64, zero-padded on the right."""
    width = max(len(token_ids) for token_ids in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, token_ids in enumerate(encodings):
        ids[row, : len(token_ids)] = token_ids
        mask[row, : len(token_ids)] = 1
    return ids, mask
