"""One video on several workers: the sequence-parallel DiT on Ray actors (CPU processes, gloo) against
one device on the tiny golden DiT, and the workers' lifecycle (a killed worker, freeing the model).

The tiny DiT has 4 heads: 3 workers get 2, 1, 1 heads (uneven Ulysses split); its token counts (72 and
48) are split unevenly too, with shards that start inside a latent frame.
"""
from __future__ import annotations

import gc
import os
import signal
import time

import pytest
import torch

from golden import assert_close, golden_cases
from infinitetalk.models.wan_dit import WanModel
from infinitetalk.parallel import pool as pool_module
from infinitetalk.parallel.pool import ParallelDiT, WorkerError, WorkerPool, _pid_alive
from infinitetalk.samplers.loop import Settings, generate

ray = pytest.importorskip("ray", reason="the multi-GPU path needs Ray (pip install ray; in the CI lock)")

ATOL = 1e-5
DIT_CASES = golden_cases("dit_single") + golden_cases("dit_multi")
LOOP_CASES = golden_cases("loop_multi_cfg3")


def _weights(case):
    return case.dir / case.case.get("weights_file", "weights.safetensors")


def _pool(case, workers: int) -> WorkerPool:
    return WorkerPool({"model_path": str(_weights(case)), "dtype": torch.float32, "config": case.config},
                      workers, device="cpu", idle_s=0)


def _local(case) -> WanModel:
    model = WanModel(**case.config).eval()
    model.load_state_dict(case.weights(), strict=True)
    return model


def _first(cases):
    case = cases[0].values[0] if cases else None
    if case is None:
        pytest.skip("no golden fixture")
    return case


@pytest.fixture(scope="module", params=[2, 3], ids=["2workers", "3workers"])
def parallel_dit(request):
    """One pool per worker count for the whole module (starting one costs seconds)."""
    pool = _pool(_first(DIT_CASES), request.param)
    dit = ParallelDiT(pool, torch.float32)
    yield dit
    pids = pool.pids()
    dit.close()
    assert not any(_pid_alive(p) for p in pids)


def _dit_calls(case):
    inp = case.inputs()
    audio = inp["audio"] if "audio" in inp else inp["audio_full"][:, inp["audio_indices"]]
    for call in case.case["calls"]:
        x = inp[call.get("x", "x")][None]
        context = inp[call["context"].strip("[]")][None]
        use = audio if call["audio"] == "audio" else torch.zeros_like(audio[:1])
        yield call["output"], (x, inp[call["t"]], context, inp["clip_fea"], inp["y"], use), inp["ref_target_masks"]


@pytest.mark.parametrize("case", DIT_CASES)
def test_workers_match_one_device(parallel_dit, case):
    local, expected = _local(case), case.outputs()
    for name, args, masks in _dit_calls(case):
        one = local(*args, ref_target_masks=masks)
        many = parallel_dit(*args, ref_target_masks=masks)
        assert_close(many, one, ATOL, f"{case.id} {name}: {parallel_dit.pool.workers} workers vs 1")
        assert_close(many, expected[name], 1e-4, f"{case.id} {name} vs the reference")


def _run_loop(case, dit, on_step=None):
    """The golden loop case (as tests/test_loop_golden.py drives it); returns the traced tensors."""
    s, inp = case.case["sampling"], case.inputs()
    h, w, frames = s["pixel_h"], s["pixel_w"], s["frame_num"]
    torch.manual_seed(0)
    image = torch.rand(h, w, 3)
    audio = inp["audio_full"]
    if s["human_num"] == 2:
        audio = torch.cat([audio, inp["full_audio_emb_person2"][None]])
    settings = Settings(steps=s["steps"], shift=s["shift"], text_scale=s["text_guide_scale"],
                        audio_scale=s["audio_guide_scale"], seed=s["seed"], frame_num=frames, motion_frames=frames,
                        max_frames=frames, size=(h, w), color_strength=0.0, dit_dtype=torch.float32)
    traced = {}
    generate(dit, lambda px: inp["latent_motion_frames"] if px.shape[0] == 1 else inp["y_vae_latent"],
             lambda lat: torch.zeros(frames, h, w, 3), lambda f: inp["clip_fea"], image, audio,
             (inp["context"], inp["context_null"]), settings, on_step=on_step,
             trace=lambda k, v: traced.__setitem__(k, v))
    return traced


@pytest.mark.parametrize("case", LOOP_CASES)
def test_loop_on_workers_matches_one_device(parallel_dit, case):
    one, many = _run_loop(case, _local(case)), _run_loop(case, parallel_dit)
    assert set(one) == set(many)
    for key in one:
        assert_close(many[key], one[key], ATOL, f"{case.id} {key}")
    assert_close(many["x0"], case.outputs()["x0"], 5e-4, f"{case.id} x0 vs the reference")


def test_killed_worker_is_one_error_then_next_run_works_and_free_leaves_no_process():
    case = _first(LOOP_CASES)
    pool = _pool(case, 2)
    dit = ParallelDiT(pool, torch.float32)
    killed = []

    def kill_after_first_step(done, total):
        if not killed:
            killed.append(pool.pids()[1])
            os.kill(killed[0], signal.SIGKILL)

    with pytest.raises(WorkerError) as err:
        _run_loop(case, dit, on_step=kill_after_first_step)
    message = str(err.value)
    del err                                 # its traceback's frames hold the model
    assert "DiT worker 1 of 2" in message and f"pid {killed[0]}" in message and "run the prompt again" in message
    assert pool.actors == [] and not _pid_alive(killed[0])

    traced = _run_loop(case, dit)           # the next run starts fresh workers
    assert_close(traced["x0"], case.outputs()["x0"], 5e-4, "x0 after a restart")
    pids = pool.pids()
    assert len(pids) == 2 and killed[0] not in pids

    del dit                                 # the host dropping the model: workers stop with it
    gc.collect()
    assert pool.actors == [] and not any(_pid_alive(p) for p in pids)
    if not any(p.actors for p in pool_module._live):   # the module's shared pools may still be running
        assert not ray.is_initialized(), "the Ray session this pack started must end with its last pool"


def test_idle_workers_stop_by_themselves():
    case = _first(DIT_CASES)
    pool = _pool(case, 2)
    pool.idle_s = 0.5
    dit = ParallelDiT(pool, torch.float32)
    name, args, masks = next(_dit_calls(case))
    dit(*args, ref_target_masks=masks)
    pids = pool.pids()
    deadline = time.monotonic() + 60
    while (pool.actors or any(map(_pid_alive, pids))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pool.actors == [] and not any(map(_pid_alive, pids)), "idle workers were not stopped"
    assert_close(dit(*args, ref_target_masks=masks), case.outputs()[name], 1e-4, "after an idle stop")
    dit.close()
