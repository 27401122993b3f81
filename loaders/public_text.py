"""What an error may say to an API client and the host's log (comfy-free; ``loaders/model_folders.py``
passes the host's folders in): no absolute server paths, nothing unprintable."""
from __future__ import annotations

import re

_ABS_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:[\\/]|/)(?:[^\s'\"/\\:]+[/\\])+([^\s'\",;:)\]]*)")


def safe_text(text: str) -> str:
    """Escape what cannot be printed or encoded (control characters, lone surrogates of non-UTF-8
    file names) so the host can log the text and send it as JSON."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape", "backslashreplace")
                   .decode("ascii") for c in str(text))


def public_text(text: str, roots: list[tuple[str, str]] = ()) -> str:
    """``roots``: (absolute folder, what to show instead), longest first. Known folders are shown by
    their role (models/loras/...), any other absolute path reduced to its file name, then ``safe_text``."""
    text = str(text)
    for path, label in roots:
        if path:
            text = text.replace(path + "/", label + "/").replace(path + "\\", label + "/").replace(path, label)
    text = _ABS_PATH.sub(lambda m: ".../" + m.group(1), text)
    return safe_text(text)
