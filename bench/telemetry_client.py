"""A benchmark client in its own process: sequential async work items (submit, wait) against an org's stations,
traced when the OTEL_* variables say so. Prints its latency summary as one JSON line on stdout.

``python -m bench.telemetry_client --nats URL --org ORG --n 500 --warmup 50``
"""

from __future__ import annotations

import argparse
import asyncio
import json

from bench.common import PAYLOAD, sample, summary
from station_runtime.api.models import WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.contract.messages import WorkPhase
from station_runtime.natsio.connect import NatsSettings
from station_runtime.telemetry import tracing


async def main(url: str, org: str, n: int, warmup: int, max_s: float) -> dict[str, float]:
    async with LatticeClient(NatsSettings(url=url), org) as client:
        async def once() -> None:
            record = await client.submit(WorkItemSpec(agent="echo", input=PAYLOAD), watch=True)
            final = await client.wait_work(record.work_id, timeout_s=30)
            if final.phase != WorkPhase.SUCCEEDED:
                raise RuntimeError(f"work {final.work_id} ended {final.phase}")

        return summary(await sample(once, n, warmup=warmup, max_s=max_s))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--nats", required=True)
    parser.add_argument("--org", required=True)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--max-s", type=float, default=30.0)
    args = parser.parse_args()
    traced = tracing.configure("lattice-bench-client")
    try:
        stats = asyncio.run(main(args.nats, args.org, args.n, args.warmup, args.max_s))
    finally:
        tracing.shutdown()
    print(json.dumps({**stats, "traced": traced}))
