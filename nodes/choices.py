"""The nodes' model-file choices: combo lists, the one "file not found" check, input fingerprints."""
from __future__ import annotations

from ..loaders import model_folders
from .types import input_error

NONE = "none"


def options(kind: str, with_none: bool = False) -> list[str]:
    """The combo's entries: the files (shard sets, HF folders as one entry) in the kind's folders."""
    return ([NONE] if with_none else []) + model_folders.list_models(kind)


def folder_hint(kind: str) -> str:
    return " or ".join(f"ComfyUI/models/{n}/" for n in model_folders.KINDS[kind])


def not_found(node: str, input_name: str, kind: str, name: str) -> ValueError:
    return input_error(node, input_name, f"'{name}' was not found",
                       f"Put it in {folder_hint(kind)} and refresh the page (R)")


def chosen_file(node: str, input_name: str, kind: str, name: str, optional: bool = False) -> str | None:
    """The full path of the choice; None for 'none' when ``optional``; else a not-found error."""
    if optional and name in (NONE, "", None):
        return None
    path = model_folders.resolve_model(kind, name)
    if path is None:
        raise not_found(node, input_name, kind, name)
    return path


def missing_file(node: str, input_name: str, kind: str, name: str, optional: bool = False) -> str | None:
    """For ``validate_inputs``: the same message as ``chosen_file``'s error, or None when it is there."""
    try:
        chosen_file(node, input_name, kind, name, optional)
    except ValueError as err:
        return str(err)
    return None


def fingerprint(kind: str, name: str) -> tuple:
    """Changes when the file behind the choice changes, not only when the choice does."""
    return model_folders.fingerprint(kind, name)
