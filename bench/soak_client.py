"""The soak's submitting process: ``python -m bench.soak_client URL ORG PLAN_JSON``.

It runs the rounds of the plan one after the other (each: ``items`` items at ``inflight`` at once, ``retries``
allowed), and after each prints one JSON line with what came of it and its own RSS, so that the runner sees the
client's memory as a user's submitting process has it, apart from the runner's own.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import PAYLOAD, rss_mb
from station_runtime.client import LatticeClient
from station_runtime.contract.messages import WorkPhase
from station_runtime.contract.specs import WorkItemSpec
from station_runtime.natsio.connect import NatsSettings


async def round_(client: LatticeClient, items: int, inflight: int, retries: int) -> dict[str, Any]:
    phases: Counter[str] = Counter()
    attempts = 0
    submitted = 0
    t0 = time.perf_counter()

    async def worker() -> None:
        nonlocal submitted, attempts
        while submitted < items:
            submitted += 1
            record = await client.submit(WorkItemSpec(agent="echo", input=PAYLOAD, max_retries=retries), watch=True)
            final = await client.wait_work(record.work_id, timeout_s=120)
            phases[final.phase.value] += 1
            attempts += final.attempt

    await asyncio.gather(*(worker() for _ in range(inflight)))
    elapsed = time.perf_counter() - t0
    auctioneer = await client.auctioneer()
    return {"items": items, "inflight": inflight, "retries": retries, "seconds": round(elapsed, 2),
            "per_s": round(items / elapsed, 1), "phases": dict(phases),
            "succeeded": phases[WorkPhase.SUCCEEDED.value], "escalated": phases[WorkPhase.ESCALATED.value],
            # Attempts beyond one per item: each is a retry spent. With nothing failing, contention is the cause.
            "extra_attempts": attempts - items, "contended_placements": auctioneer.contended}


async def main(url: str, org: str, plan: list[dict[str, int]], creds: str | None) -> None:
    settings = NatsSettings(url=url, name="soak-client", creds_file=Path(creds) if creds else None)
    async with LatticeClient(settings, org) as client:
        await client.wait_for_stations(1, agent="echo", timeout_s=60)
        for step in plan:
            result = await round_(client, step["items"], step["inflight"], step["retries"])
            result["rss_mb"] = round(rss_mb(os.getpid()), 1)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None))
