"""Model folder scans and choices without the host (a stand-in ``folder_paths``): issue 11 points
1 (error texts safe to log), 2 (symlink loops), 3 (symlinked files and folders), 7 (no server paths
in error texts) and 10 (the cache key follows the content)."""
from __future__ import annotations

import os
import sys
import types

import pytest

FAKE = types.ModuleType("folder_paths")
FAKE.folder_names_and_paths = {}
FAKE.supported_pt_extensions = {".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".sft", ".pkl"}
FAKE.models_dir = "/nonexistent/models"
FAKE.base_path = "/nonexistent"
FAKE.get_folder_paths = lambda name: list(FAKE.folder_names_and_paths[name][0])
FAKE.get_output_directory = lambda: "/nonexistent/output"
FAKE.get_input_directory = lambda: "/nonexistent/input"
FAKE.get_temp_directory = lambda: "/nonexistent/temp"
sys.modules.setdefault("folder_paths", FAKE)

from infinitetalk.loaders import model_folders as mf  # noqa: E402


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setattr(mf, "folder_paths", FAKE)
    root = tmp_path / "ComfyUI"
    for name in ("loras", "diffusion_models"):
        (root / "models" / name).mkdir(parents=True)
    monkeypatch.setattr(FAKE, "folder_names_and_paths",
                        {n: ([str(root / "models" / n)], FAKE.supported_pt_extensions)
                         for n in ("loras", "diffusion_models")})
    monkeypatch.setattr(FAKE, "models_dir", str(root / "models"))
    monkeypatch.setattr(FAKE, "base_path", str(root))
    monkeypatch.setattr(FAKE, "get_output_directory", lambda: str(root / "output"))
    return root / "models"


def test_symlink_loops_are_listed_once(models):
    loras = models / "loras"
    (loras / "m.safetensors").write_bytes(b"x")
    os.symlink(".", loras / "a")
    assert mf.list_models("loras") == ["m.safetensors"]       # one loop alone used to give 1,639 entries
    os.symlink(".", loras / "b")                               # two loops used to hang /object_info
    os.symlink("..", loras / "up")
    assert mf.list_models("loras") == ["m.safetensors"]


def test_symlinked_files_and_folders_are_followed(models, tmp_path):
    other = tmp_path / "other_disk"
    (other / "wan").mkdir(parents=True)
    (other / "big.safetensors").write_bytes(b"x")
    (other / "wan" / "w.safetensors").write_bytes(b"y")
    os.symlink(other / "big.safetensors", models / "loras" / "big.safetensors")
    os.symlink(other / "wan", models / "loras" / "wan")
    listed = mf.list_models("loras")
    assert listed == ["big.safetensors", "wan/w.safetensors"]
    for name in listed:
        path = mf.resolve_model("loras", name)
        assert path is not None and os.path.isfile(path), name


@pytest.mark.parametrize("name", ["../diffusion_models/x.safetensors", "/etc/passwd", "a/../../x"])
def test_names_outside_the_folders_are_not_resolved(models, name):
    (models / "diffusion_models" / "x.safetensors").write_bytes(b"x")
    assert mf.resolve_model("loras", name) is None


def test_cache_key_changes_with_the_content(models):
    path = models / "loras" / "m.safetensors"
    path.write_bytes(b"A" * 300_000)
    st = path.stat()
    before = mf.file_key(str(path))
    with open(path, "r+b") as f:                   # same size, other bytes, mtime put back
        f.seek(150_000)
        f.write(b"B" * 10)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_size == st.st_size
    assert mf.file_key(str(path)) != before
    assert mf.file_key(str(path)) == mf.file_key(str(path))


def test_error_texts_are_safe_to_log_and_carry_no_server_paths(models):
    bad = "bad\udcff\x1b[2Jname.safetensors"            # a non-UTF-8 file name as Python sees it
    msg = mf.public_text(f"InfiniteTalk LoRA: input 'lora': '{bad}' was not found")   # nodes/types.input_error
    msg.encode("utf-8")                                 # strict: no lone surrogates left
    assert "\x1b" not in msg and "\\udcff" in msg
    text = mf.public_text(f"{models}/loras/sub/x.safetensors: damaged; also /srv/secret/dir/y.bin "
                          f"and {models.parent}/output/v.mp4, 1/25 s")
    assert str(models) not in text and "/srv/secret" not in text
    assert "models/loras/sub/x.safetensors" in text and "y.bin" in text and "1/25 s" in text
