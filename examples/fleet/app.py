"""The fleet rollout's app: a tiny ASGI app, no framework.

Every answer names the host, the baton generation, the master and the
worker that served it, so the rollout can check that a restart, reload or
upgrade of a host really happened (and which host answered each request):

    h2 generation 3 master 4242 pid 4250

Its import takes 0.5 s, a stand-in for a real app's, so a new generation
boots while the old one serves.
"""

import os
import time

time.sleep(0.5)  # simulated import time

HOST = os.environ.get("FLEET_HOST", "?")
BODY = (
    f"{HOST} generation {os.environ.get('BATON_GENERATION', '?')} "
    f"master {os.environ.get('BATON_MASTER_PID', '?')} pid {os.getpid()}\n"
).encode()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "http":
        await answer(receive, send)


async def lifespan(receive, send):
    # Nothing to set up or tear down; answering keeps uvicorn from guessing.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def answer(receive, send):
    # Read the whole request body (the load client POSTs) before answering.
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(BODY)).encode()),
        ],
    })
    await send({"type": "http.response.body", "body": BODY})
