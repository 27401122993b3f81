"""The bundled workflows' demo inputs, offered in the host's input/ folder at start-up.

The workflows in example_workflows/ name the pack's demo/ files (single_ref_image.png,
single_1.wav, ...). LoadImage / LoadAudio / LoadVideo only list input/, so on a fresh install those
names would show up as missing. At start-up we copy each demo file into input/ when no file of that
name is there yet: a user's file of the same name is never touched.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"
KINDS = (".png", ".jpg", ".wav", ".flac", ".mp3", ".mp4")


def offer_demo_inputs(input_dir: str | os.PathLike, demo_dir: Path = DEMO_DIR) -> list[str]:
    """Copy demo files missing from ``input_dir``; returns the names copied."""
    if not demo_dir.is_dir():
        return []
    target = Path(input_dir)
    copied = []
    for src in sorted(demo_dir.iterdir()):
        if src.suffix.lower() not in KINDS:
            continue
        dst = target / src.name
        if dst.exists() or dst.is_symlink():
            continue
        try:
            target.mkdir(parents=True, exist_ok=True)
            tmp = target / f".{src.name}.{os.getpid()}.part"
            shutil.copyfile(src, tmp)
            os.link(tmp, dst)               # fails, rather than overwrites, if the name appeared
            tmp.unlink()
            copied.append(src.name)
        except FileExistsError:
            tmp.unlink(missing_ok=True)
        except OSError as err:              # a read-only input folder: the workflows still load
            log.warning("InfiniteTalk: could not copy the demo input %s into %s: %s", src.name, target, err)
            return copied
    if copied:
        log.info("InfiniteTalk: demo inputs for the bundled workflows copied into %s: %s",
                 target, ", ".join(copied))
    return copied


def offer_to_host() -> list[str]:
    import folder_paths

    return offer_demo_inputs(folder_paths.get_input_directory())
