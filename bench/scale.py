"""Work that scales with what changes, not with what is stored: an org with 100,000 finished records and 100 active
ones, against the same with no finished records.

* ``station_resume_ms_*``: what a restarted station does to find its own work. It reads the record its previous
  run left in the registry (the work its last beat listed) and then each listed record (100 here): not a scan of
  the org. The scan it did before (``StationWork.resume`` without that record) is measured beside it.
* ``witness_sweep_cpu_ms_*``: the CPU of a witness tick over the org (its index follows the work bucket; finished
  records are counted, not kept), the median of 50 ticks, after the index is built.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import timedelta
from typing import Any

from bench.context import RunContext
from station_runtime.api.models import WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.contract import subjects
from station_runtime.contract.codec import decode, encode
from station_runtime.contract.messages import StationRecord, WorkPhase, WorkRecord, utcnow
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.state import MIB, StateLimits
from station_runtime.work.controller import WorkController

ACTIVE = 100
STATION = "resumer"


async def _fill(client: LatticeClient, org: str, finished: int) -> list[str]:
    """``finished`` Succeeded records and ``ACTIVE`` Running ones on ``STATION``, written straight into the
    bucket; the registry record a previous run of ``STATION`` would have left (beating every 10 minutes: live for
    the whole measurement, so that the witness's ticks find nothing to do but look)."""
    state = await client.state()
    js = state.js
    bucket = subjects.bucket(org, "work")
    now = utcnow()
    spec = WorkItemSpec(agent="echo", input="x")
    done = WorkRecord(org=org, work_id="x", spec=spec, phase=WorkPhase.SUCCEEDED, attempt=1, attempt_id="a",
                      station_id="elsewhere", result="x", finished_at=now)
    for start in range(0, finished, 1000):
        for i in range(start, min(start + 1000, finished)):
            await js.publish_async(subjects.kv_key(bucket, f"done-{i}"),
                                   encode(done.model_copy(update={"work_id": f"done-{i}"})))
        await js.publish_async_completed()
    held: list[str] = []
    for i in range(ACTIVE):
        record = WorkRecord(org=org, work_id=f"live-{i}", spec=spec, phase=WorkPhase.RUNNING, attempt=1,
                            attempt_id=f"a{i}", station_id=STATION, assigned_at=now, started_at=now,
                            last_progress_at=now)
        await js.publish(subjects.kv_key(bucket, record.work_id), encode(record))
        held.append(record.work_id)
    previous = StationRecord(org=org, station_id=STATION, capacity=ACTIVE, load=ACTIVE, heartbeat_interval_s=600.0,
                             started_at=now - timedelta(minutes=5), last_heartbeat=now, holding=held,
                             lists_holding=True)
    await state.stations.put(STATION, encode(previous))
    return held


async def _measure(ctx: RunContext, finished: int) -> dict[str, Any]:
    org = f"bench-scale-{finished}"
    limits = StateLimits(presence_ttl_s=600.0, work_max_bytes=2048 * MIB)
    async with LatticeClient(NatsSettings(url=ctx.nats_url), org, create_state=True, limits=limits) as client:
        held = await _fill(client, org, finished)
        store = await client.work_store()
        state = await client.state()

        async def resume_by_beat() -> int:
            entry = await state.stations.get(STATION)
            previous = decode(entry.value or b"", StationRecord)
            found = await asyncio.gather(*(store.get(w) for w in previous.holding))
            return sum(1 for v in found if v and v.record.station_id == STATION)

        async def resume_by_scan() -> int:
            return sum(1 for v in await store.all() if v.record.station_id == STATION
                       and v.record.phase == WorkPhase.RUNNING)

        timings: dict[str, float] = {}
        for name, fn in (("beat", resume_by_beat), ("scan", resume_by_scan)):
            samples = []
            for _ in range(3 if name == "scan" and finished else 7):
                t = time.perf_counter()
                assert await fn() == len(held)
                samples.append((time.perf_counter() - t) * 1000)
            timings[name] = round(statistics.median(samples), 2)
        async with WorkController(await client.org_work(), interval_s=3600) as controller:
            witness = controller.witness
            assert witness is not None
            cpu = []
            for _ in range(50):
                t = time.process_time()
                await witness.tick()
                cpu.append((time.process_time() - t) * 1000)
            index_live = len(controller.index.live)
    return {"finished": finished, "resume_ms": timings["beat"], "scan_ms": timings["scan"],
            "sweep_cpu_ms": round(statistics.median(cpu), 3), "index_live": index_live}


async def run(ctx: RunContext) -> None:
    many = 100_000 if ctx.mode.name == "full" else 2_000
    empty = await _measure(ctx, 0)
    full = await _measure(ctx, many)
    ctx.record("scale", {"empty": empty, "full": full})
    if many == 100_000:  # the keys name 100k: a smaller run (a smoke test of this code) keeps to its details
        ctx.results["station_resume_ms_0_records"] = empty["resume_ms"]
        ctx.results["station_resume_ms_100k_records"] = full["resume_ms"]
        ctx.results["witness_sweep_cpu_ms_0_records"] = empty["sweep_cpu_ms"]
        ctx.results["witness_sweep_cpu_ms_100k_records"] = full["sweep_cpu_ms"]
