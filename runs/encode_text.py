"""One T5 Text Encode run without the host: prompt + negative prompt -> umT5 states for the sampler
(``loaders/kept_encoders.py``, ``host`` passed in). Errors name the input."""
from __future__ import annotations

from ..errors import InputError
from ..loaders import kept_encoders


def check_text(name: str, text: str) -> None:
    """Text the tokenizer can encode (no lone surrogates, e.g. half of an emoji)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(name, f"character {err.start} is not valid text (a lone surrogate, e.g. half of "
                         "an emoji)", "Retype or paste the text again") from None


def encode_text(host, t5_path: str, prompt: str, negative_prompt: str) -> dict:
    """-> {"context": [1, L, 4096], "context_null": [1, L', 4096]} (float32, CPU)."""
    check_text("prompt", prompt)
    check_text("negative_prompt", negative_prompt)
    try:
        context, context_null = kept_encoders.encode_texts(t5_path, [prompt, negative_prompt], host)
    except ValueError as err:   # LoaderError and the loaders' own errors
        raise InputError("t5_model", str(err)) from None
    return {"context": context, "context_null": context_null}
