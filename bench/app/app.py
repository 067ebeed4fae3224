"""The benchmark's ASGI app: pure ASGI, no framework, standard library only.

Importing this module takes 1.5 s (a stand-in for a Django project's import
time), so every worker that starts pays it; each request then takes about
3 ms and is answered 200 with the pid of the worker that served it, whatever
its method (the load generator sends POST so that Go's HTTP client never
replays a request).
"""

import asyncio
import os
import time

time.sleep(1.5)  # simulated import time


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
    # Read the whole request body before answering.
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
