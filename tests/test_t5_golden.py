"""umT5 encoder parity against the official reference (golden README §7)."""
from __future__ import annotations

import pytest
import torch

from golden import assert_close, golden_cases
from infinitetalk.loaders.text import load_umt5
from infinitetalk.models.umt5 import UMT5Encoder
from tiny import text_audio_files

ATOL = 1e-4


def _model(case):
    model = UMT5Encoder(**case.config).eval()
    model.load_state_dict(case.weights(), strict=True)
    return model


@pytest.mark.parametrize("case", golden_cases("t5"))
def test_hidden_matches_reference(case):
    inputs, expected = case.inputs(), case.outputs()
    hidden = _model(case)(inputs["ids"], inputs["mask"])
    assert_close(hidden, expected["hidden"], ATOL, "t5 hidden")


@pytest.mark.parametrize("case", golden_cases("t5"))
def test_trimmed_contexts(case):
    inputs, expected = case.inputs(), case.outputs()
    contexts = _model(case).encode_trimmed(inputs["ids"], inputs["mask"])
    assert len(contexts) == inputs["ids"].shape[0]
    for b, ctx in enumerate(contexts):
        assert_close(ctx, expected[f"context{b}"], ATOL, f"t5 context{b}")


@pytest.mark.parametrize("case", golden_cases("t5"))
def test_valid_tokens_do_not_depend_on_padding(case):
    inputs = case.inputs()
    model = _model(case)
    ids, mask = inputs["ids"][:1], inputs["mask"][:1]
    n = int(mask.sum())
    short = model(ids[:, :n], mask[:, :n])[0]
    full = model(ids, mask)[0, :n]
    assert_close(short, full, ATOL, "padding independence")


@pytest.mark.parametrize("case", golden_cases("t5"))
def test_loader_gives_the_reference_hidden(case, tmp_path):
    """The same weights through ``load_umt5`` (official names, streamed by the loading core)."""
    weights = case.dir / case.case.get("weights_file", "weights.safetensors")
    tokenizer = text_audio_files.write_tokenizer_folder(tmp_path / "tokenizer")
    model, _ = load_umt5(weights, dtype=torch.float32, tokenizer_path=tokenizer)
    assert model.config == {k: v for k, v in case.config.items() if k != "dropout"}
    inputs = case.inputs()
    assert_close(model(inputs["ids"], inputs["mask"]), case.outputs()["hidden"], ATOL, "t5 hidden via load_umt5")
