"""Query text -> token features with the bundle's text encoder (``tokenizers`` + ONNX Runtime).

Each text is first cleaned as the manifest's ``text_encoder.text_cleaning`` says (OpenAI CLIP's cleaning for
every CLIP bundle, old ones included: ``trdetr_common.text``), then tokenised by ``tokenizer.json``.
The bundled encoder is the CLIP text transformer: ``input_ids`` / ``attention_mask`` (B, L) int64
-> ``last_hidden_state`` (B, L, text_dim). Which rows form ``src_txt`` is the manifest's
``text_encoder.token_selection``: the rows of the real tokens (start and end tokens included,
padding dropped), the first ``max_text_tokens`` of them, L2-normalised per token when
``l2_normalize_text`` says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.errors import InvalidInput
from service.inference.session import OnnxModel
from trdetr_common.features import build_text_features
from trdetr_common.manifest import PreprocessingContract
from trdetr_common.text import QueryTokenizer


class TextEncoder:
    """Tokenise and encode a list of query texts in one ONNX Runtime run."""

    def __init__(self, bundle_dir: Path, pre: PreprocessingContract, model: OnnxModel) -> None:
        spec = pre.text_encoder
        assert spec.onnx_file and spec.tokenizer_file, "TextEncoder needs a bundle with a text encoder"
        self._pre = pre
        self.model = model
        self.tokenizer = QueryTokenizer(Path(bundle_dir) / spec.tokenizer_file, spec.text_cleaning,
                                        keep_truncation=False)
        self.context_length = spec.context_length or 77

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, both (B, L_max) int64, zero-padded on the right.

        Raises 422 when a text has more tokens than the encoder's context length.
        """
        encodings = self.tokenizer.encode_batch(texts)
        for index, token_ids in enumerate(encodings):
            if len(token_ids) > self.context_length:
                raise InvalidInput(
                    f"queries[{index}] is {len(token_ids)} tokens long; the text encoder takes at most "
                    f"{self.context_length} (start and end tokens included). Shorten the query.",
                    {"index": index, "tokens": len(token_ids), "max_tokens": self.context_length},
                    code="query_too_long",
                )
        width = max(len(token_ids) for token_ids in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, token_ids in enumerate(encodings):
            ids[row, : len(token_ids)] = token_ids
            mask[row, : len(token_ids)] = 1
        return ids, mask

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One ``(L_i, text_dim)`` float32 feature array per text, ready for ``src_txt``."""
        ids, mask = self.tokenize(texts)
        pre = self._pre
        ids_name, mask_name = pre.text_encoder.input_names
        hidden = self.model.run({ids_name: ids, mask_name: mask})[pre.text_encoder.output_name]
        return [
            build_text_features(
                hidden[row, : int(mask[row].sum())],
                normalize=pre.l2_normalize_text,
                max_tokens=pre.max_text_tokens,
                eps=pre.l2_eps,
            )
            for row in range(len(texts))
        ]
