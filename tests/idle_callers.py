"""A process of callers that never read: N streams, all Pause with one request_id, spread over
a few channels. It connects, prints {"ready": true} and waits for a line on stdin; then starts
every call, prints {"started": N}, waits for another line, prints {"codes": {code: count}} for
the calls that ended meanwhile, and exits.

    python -m tests.idle_callers TARGET REQUEST_ID N CHANNELS
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys

import grpc

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc


async def main(target: str, request_id: str, count: int, channels: int) -> None:
    # One connection per channel (channels to one target share one by default): the service
    # allows a bounded number of streams per connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    pool = [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]
    stubs = [control_pb2_grpc.ControlServiceStub(channel) for channel in pool]
    request = pb.PauseRequest(request_id=request_id, timeout={"seconds": 60})
    await asyncio.gather(*(channel.channel_ready() for channel in pool))
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    calls = [stubs[i % channels].Pause(request, timeout=120) for i in range(count)]
    await asyncio.sleep(0)  # let every call start
    print(json.dumps({"started": count}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    codes: collections.Counter[str] = collections.Counter()
    for call in calls:
        if call.done():
            codes[(await call.code()).name] += 1
        else:
            codes["RUNNING"] += 1
            call.cancel()
    print(json.dumps({"codes": codes}), flush=True)
    for channel in pool:
        await channel.close()


if __name__ == "__main__":
    target, request_id, count, channels = sys.argv[1:5]
    asyncio.run(main(target, request_id, int(count), int(channels)))
