"""The preload-boot scenario's app: app.py's requests, but its import burns
1 s of CPU in a busy loop (not a sleep), as a large project's import does.

So every process that imports it needs a CPU for a second: 8 workers that
each import it need 8 CPU-seconds, which on 2 CPUs is at least 4 s of wall
time; a preload template imports it once and forks the workers.
"""

import asyncio
import os
import time

_deadline = time.process_time() + 1.0
while time.process_time() < _deadline:  # this process's CPU time, not the wall clock
    pass


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    await asyncio.sleep(0.003)
    # The pid of the process serving, read per request: with preload the
    # module is imported once, in the process the workers are forked from.
    pid = str(os.getpid()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(pid)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": pid})
