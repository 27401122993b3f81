"""umT5 tokenizer from files the user already has; never downloads.

Sources, in order: an explicit tokenizer path; the ``spiece_model`` uint8 tensor that ComfyUI's
``umt5_xxl_*.safetensors`` files embed; a ``google/umt5-xxl``-like folder near the weights
(``tokenizer.json`` preferred, else ``spiece.model``). Tokenisation follows the official
``HuggingfaceTokenizer(name, seq_len=512, clean='whitespace')``: clean the text, sentencepiece ids,
``</s>`` appended, truncated to ``seq_len`` (EOS kept), padded with id 0; returns ids and mask.

Cleaning: html-unescape twice, collapse whitespace, strip. The reference also runs ``ftfy.fix_text``
first; ftfy is not a dependency of this pack, so mojibake repair is skipped (it changes nothing for
well-formed UTF-8 prompts).
"""
from __future__ import annotations

import html
import logging
import re
from pathlib import Path

import torch

from .files import LoaderError

log = logging.getLogger(__name__)

SEQ_LEN = 512
PAD_ID = 0
EOS_ID = 1
FOLDER_NAMES = ("google/umt5-xxl", "umt5-xxl", "umt5_xxl", "tokenizer", "t5_tokenizer", "T5_tokenizer")
FILE_NAMES = ("tokenizer.json", "spiece.model")


class TokenizerNotFoundError(LoaderError):
    """No umT5 tokenizer file near the weights; the message lists every place searched (a ValueError)."""


def clean_text(text: str) -> str:
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


class UMT5Tokenizer:
    """``tokenizer(texts) -> (ids [B, seq_len] long, mask [B, seq_len] long)``."""

    def __init__(self, encode, source: str, seq_len: int = SEQ_LEN, eos_id: int = EOS_ID, pad_id: int = PAD_ID):
        self._encode = encode  # text -> ids WITHOUT the end-of-sequence token
        self.source = source
        self.seq_len = seq_len
        self.eos_id = eos_id
        self.pad_id = pad_id

    def encode(self, text: str) -> list[int]:
        ids = list(self._encode(clean_text(text)))[: self.seq_len - 1]
        return ids + [self.eos_id]

    def __call__(self, texts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.full((len(texts), self.seq_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), self.seq_len), dtype=torch.long)
        for b, text in enumerate(texts):
            row = self.encode(text)
            ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[b, : len(row)] = 1
        return ids, mask


def from_sentencepiece_bytes(proto: bytes, source: str, seq_len: int = SEQ_LEN) -> UMT5Tokenizer:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto)
    eos = sp.eos_id() if sp.eos_id() >= 0 else EOS_ID
    pad = sp.pad_id() if sp.pad_id() >= 0 else PAD_ID
    return UMT5Tokenizer(lambda text: sp.encode(text), source, seq_len, eos, pad)


def from_tokenizer_json(path: Path, seq_len: int = SEQ_LEN) -> UMT5Tokenizer:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    eos = tok.token_to_id("</s>")
    pad = tok.token_to_id("<pad>")
    eos = EOS_ID if eos is None else eos
    # Special tokens come from the template post-processor; we add EOS ourselves after truncation.
    encode = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    return UMT5Tokenizer(encode, str(path), seq_len, eos, PAD_ID if pad is None else pad)


def from_folder(folder: Path, seq_len: int = SEQ_LEN) -> UMT5Tokenizer | None:
    if (folder / "tokenizer.json").is_file():
        return from_tokenizer_json(folder / "tokenizer.json", seq_len)
    if (folder / "spiece.model").is_file():
        return from_sentencepiece_bytes((folder / "spiece.model").read_bytes(), str(folder / "spiece.model"), seq_len)
    return None


def candidate_folders(weights_path: Path) -> list[Path]:
    """Where the official layout and common ComfyUI layouts keep the tokenizer, near the weights."""
    bases = [weights_path.parent, weights_path.parent.parent]
    out = []
    for base in bases:
        out += [base / name for name in FOLDER_NAMES]
    out.append(weights_path.parent)
    return list(dict.fromkeys(out))


def load_tokenizer(weights_path, spiece_model: torch.Tensor | None = None, tokenizer_path=None,
                   seq_len: int = SEQ_LEN) -> UMT5Tokenizer:
    """Find the umT5 tokenizer for ``weights_path``; raises ``TokenizerNotFoundError`` listing the search."""
    if tokenizer_path is not None:
        p = Path(tokenizer_path)
        if p.is_dir():
            tok = from_folder(p, seq_len)
            if tok is not None:
                return tok
        elif p.name.endswith(".json") and p.is_file():
            return from_tokenizer_json(p, seq_len)
        elif p.is_file():
            return from_sentencepiece_bytes(p.read_bytes(), str(p), seq_len)
        raise TokenizerNotFoundError(f"umT5 tokenizer: {p} has neither tokenizer.json nor spiece.model")
    if spiece_model is not None:
        return from_sentencepiece_bytes(spiece_model.cpu().numpy().tobytes(), f"{weights_path}:spiece_model", seq_len)
    searched = candidate_folders(Path(weights_path))
    for folder in searched:
        tok = from_folder(folder, seq_len) if folder.is_dir() else None
        if tok is not None:
            log.info("umT5 tokenizer: %s", tok.source)
            return tok
    places = "\n  ".join(str(f) for f in searched)
    raise TokenizerNotFoundError(
        f"umT5 tokenizer not found for {weights_path}: the file embeds no 'spiece_model' and none of these "
        f"folders has {' or '.join(FILE_NAMES)}:\n  {places}\nPut the 'google/umt5-xxl' tokenizer folder "
        "(from the Wan2.1 checkpoint) next to the weights, or use ComfyUI's umt5_xxl_*.safetensors, which "
        "embeds its tokenizer.")
