"""engine_stub frees the weights a commit swapped out away from the pause window: not right
after the resume reply (returning hundreds of MiB to the OS there delayed that reply's
transmission, so the measured pause window grew with the checkpoint: issue 15 §2), but when
the next staging starts or RETIRE_AFTER_S after the resume, whichever comes first."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from control_service.engine import Operation
from engine_stub.checkpoint import write_checkpoint
from engine_stub.engine import Engine, SimConfig


def _op(method: str) -> Operation:
    return Operation("r", method, time.monotonic() + 60, lambda _reply: None)


async def _stage_and_commit(engine: Engine, uri: str, version: str) -> bytes:
    await engine.stage_weights(_op("stage_weights"), uri, version)
    assert engine.staged is not None
    blob = engine.staged.blobs[0]
    await engine.pause(_op("pause"), "abort", False)
    engine.commit_staged(version)
    return blob


async def test_swapped_out_weights_outlive_the_resume_until_the_next_stage(
    tmp_path: Path,
) -> None:
    uri = str(tmp_path / "ckpt")
    write_checkpoint(uri)
    engine = Engine(SimConfig())
    old = await _stage_and_commit(engine, uri, "1")
    engine.resume()
    await _stage_and_commit(engine, uri, "2")  # "1" is swapped out here
    held = sys.getrefcount(old)  # this test's references and the engine's
    engine.resume()
    for _ in range(5):  # the loop runs what the resume scheduled to run soon
        await asyncio.sleep(0)
    assert sys.getrefcount(old) == held, "freed right after the resume, next to its reply"
    staging = asyncio.ensure_future(engine.stage_weights(_op("stage_weights"), uri, "3"))
    await asyncio.sleep(0)  # the stage has started
    assert sys.getrefcount(old) == held - 1, "the next staging frees the swapped-out weights"
    await staging
