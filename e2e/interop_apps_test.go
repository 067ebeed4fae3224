package e2e

// The apps the interop matrix (interop_matrix_test.go) deploys on each real
// server. Every one behaves the same way, so that one test drives them all:
//
//   - at import it reads VERSION, as it would its code: a reload that
//     rewrites VERSION must be served with the new value;
//   - then it "imports" for 0.7 s (matrixImportDelay), as a big app does:
//     auto readiness must not take a worker for ready before that;
//   - GET / answers {"pid": N, "version": "..."}: which process answered
//     and with which deploy;
//   - GET /gated creates gated.started in its working directory and gives
//     the same answer once gated.release exists there (503 after 60 s): a
//     request in flight whose end the test decides.

// pyPrelude is the Python apps' common top: the version, the slow import
// and the answer.
const pyPrelude = `import json
import os
import time

VERSION = open("VERSION").read().strip()
time.sleep(0.7)  # a slow import


def answer():
    return json.dumps({"pid": os.getpid(), "version": VERSION}).encode()
`

// pyGated is /gated for the threaded (WSGI) Python apps.
const pyGated = `

def gated():
    open("gated.started", "w").close()
    for _ in range(1200):
        if os.path.exists("gated.release"):
            return True
        time.sleep(0.05)
    return False
`

// asgiApp serves uvicorn, hypercorn and daphne (which looks for the name
// "application").
const asgiApp = pyPrelude + `
import asyncio


async def gated():
    open("gated.started", "w").close()
    for _ in range(1200):
        if os.path.exists("gated.release"):
            return True
        await asyncio.sleep(0.05)
    return False


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    status = 200
    if scope["path"] == "/gated" and not await gated():
        status = 503
    body = answer()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


application = app
`

// wsgiApp is a plain WSGI app (gunicorn's gthread worker, waitress).
const wsgiApp = pyPrelude + pyGated + `

def app(environ, start_response):
    status = "200 OK"
    if environ["PATH_INFO"] == "/gated" and not gated():
        status = "503 Service Unavailable"
    body = answer()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]
`

// flaskApp is the same as a Flask app (gunicorn's sync worker).
const flaskApp = pyPrelude + pyGated + `

from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return answer(), {"Content-Type": "application/json"}


@app.route("/gated")
def slow():
    if not gated():
        return "gated.release did not appear", 503
    return index()
`

// waitressServe serves app.py with waitress on the listener baton passes
// as fd 3 (waitress has no option for an inherited socket).
const waitressServe = `import socket

import waitress

from app import app

waitress.serve(app, sockets=[socket.socket(fileno=3)])
`

// djangoSettings, djangoURLs and djangoWSGI are a minimal Django project:
// no database, no installed app. Django imports the settings at boot and
// the URLconf at the first request.
const djangoSettings = `import time

SECRET_KEY = "not a secret: the interop test's"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "urls"
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True

VERSION = open("VERSION").read().strip()
time.sleep(0.7)  # a slow import
`

const djangoURLs = `import json
import os
import time

from django.conf import settings
from django.http import HttpResponse
from django.urls import path


def index(request):
    body = json.dumps({"pid": os.getpid(), "version": settings.VERSION})
    return HttpResponse(body, content_type="application/json")


def slow(request):
    open("gated.started", "w").close()
    for _ in range(1200):
        if os.path.exists("gated.release"):
            return index(request)
        time.sleep(0.05)
    return HttpResponse("gated.release did not appear", status=503)


urlpatterns = [path("", index), path("gated", slow)]
`

const djangoWSGI = `import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
application = get_wsgi_application()
`

// nodeServer listens on fd 3 and closes gracefully on SIGTERM: node's
// default action for it would end the process with requests in flight.
const nodeServer = `const fs = require('fs');
const http = require('http');

const version = fs.readFileSync('VERSION', 'utf8').trim();
const answer = () => JSON.stringify({pid: process.pid, version});

function gated(res) {
  fs.writeFileSync('gated.started', '');
  const start = Date.now();
  const poll = setInterval(() => {
    if (fs.existsSync('gated.release')) {
      clearInterval(poll);
      res.end(answer());
    } else if (Date.now() - start > 60000) {
      clearInterval(poll);
      res.statusCode = 503;
      res.end('gated.release did not appear');
    }
  }, 50);
}

setTimeout(() => { // a slow import
  const server = http.createServer((req, res) => {
    res.setHeader('Content-Type', 'application/json');
    if (req.url === '/gated') return gated(res);
    res.end(answer());
  }).listen({fd: 3});
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}, 700);
`

// pumaConfig is a rack app for puma.
const pumaConfig = `require "json"

version = File.read("VERSION").strip
sleep 0.7 # a slow import

answer = lambda do
  [200, {"content-type" => "application/json"}, [JSON.generate(pid: Process.pid, version: version)]]
end

gated = lambda do
  File.write("gated.started", "")
  1200.times do
    return true if File.exist?("gated.release")
    sleep 0.05
  end
  false
end

run(lambda do |env|
  next answer.call unless env["PATH_INFO"] == "/gated"
  next [503, {}, ["gated.release did not appear"]] unless gated.call
  answer.call
end)
`

// goServer is the Go row's app: the test worker (the public worker
// package's Listeners and ServeHTTP), started the way a deploy script
// would, reading its version from the file named here.
func goServer(versionFile string) string {
	return "#!/bin/sh\nexec " + testworkerBin + " -boot-delay 700ms -version-file " + versionFile + "\n"
}
