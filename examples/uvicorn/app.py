"""A tiny ASGI app, no framework, to run under baton with uvicorn.

    baton run -b 127.0.0.1:8000 -w 4 -- uvicorn --fd 3 app:app

Every worker answers with its own pid, so repeated requests show the load
spread over the workers, and a reload shows new pids taking over.
"""

import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "http":
        await hello(send)


async def lifespan(receive, send):
    # Nothing to set up or tear down; answering keeps uvicorn from guessing.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello(send):
    body = f"hello from pid {os.getpid()}\n".encode()
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ],
    })
    await send({"type": "http.response.body", "body": body})
