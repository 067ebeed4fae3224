"""baton's fork server ("template") for preload mode. Standard library only.

baton starts this program once per generation with the interpreter (and the
interpreter flags) of the worker command:

    python3 [FLAGS] forkserver.py [--preload MOD]... -- COMMAND...

It imports the preload modules once, reports "ready" on the control socket
(fd $BATON_FORKSERVER_FD, a SOCK_SEQPACKET socket, one JSON object per
datagram), and then forks a worker for each "fork" request. Each worker runs
COMMAND's own entry point in-process (runpy), so the application it imports
is the one already in memory. docs/forkserver.md describes the protocol.

Python 3.9 or newer. Nothing here may start a thread: fork() copies only the
calling thread, and a lock another thread held stays locked in the child.
"""

import gc

# Every object created from here on stays where it is: the collector would
# otherwise touch (and so copy) the pages of objects the workers share.
gc.disable()

import asyncio  # noqa: E402  (imported for the watchdog hook, before uvloop)
import asyncio.events  # noqa: E402
import array  # noqa: E402
import ast  # noqa: E402
import atexit  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import runpy  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

try:
    import ctypes
    # Loaded once, here: every worker calls prctl through it.
    LIBC = ctypes.CDLL(None, use_errno=True)
except (ImportError, OSError):  # a build without ctypes: workers run without PDEATHSIG
    ctypes = LIBC = None

MAX_MESSAGE = 64 * 1024
PR_SET_PDEATHSIG = 1
PYTHON_NAME = re.compile(r"^(python|pypy)[0-9]*(\.[0-9]+)*$")

# The signal dispositions this interpreter started with (Python's own
# startup state: SIGINT raises KeyboardInterrupt, SIGPIPE and SIGXFSZ are
# ignored), so that a worker gets them back.
STARTUP_SIGNALS = {}
for _sig in signal.valid_signals():
    try:
        STARTUP_SIGNALS[_sig] = signal.getsignal(_sig)
    except (OSError, ValueError):
        pass


def log(text):
    sys.stderr.write("baton forkserver[%d]: %s\n" % (os.getpid(), text))
    sys.stderr.flush()


# ---------------------------------------------------------------- messages

def encode(message):
    """One datagram: JSON, at most MAX_MESSAGE bytes. A long traceback or
    error is cut in its middle, keeping its head and tail."""
    data = json.dumps(message).encode()
    while len(data) > MAX_MESSAGE:
        key = max(("traceback", "error"), key=lambda k: len(message.get(k) or ""))
        text = message.get(key) or ""
        if len(text) < 200:
            raise ValueError("message too long: %d bytes" % len(data))
        # Both fields may be long (the traceback ends with the error):
        # halve the longer one until the shorter one's cut is enough.
        keep = max(len(text) - (len(data) - MAX_MESSAGE) - 200, len(text) // 2)
        cut = len(text) - keep
        message[key] = "%s\n... (%d characters left out) ...\n%s" % (
            text[: keep // 2], cut, text[len(text) - keep // 2:])
        data = json.dumps(message).encode()
    return data


def send(ctrl, message):
    ctrl.send(encode(message))


def error_message(exc):
    lines = traceback.format_exception_only(type(exc), exc)
    return {
        "type": "error",
        "error": lines[-1].strip() if lines else repr(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


# ----------------------------------------------------------------- command

class CommandError(Exception):
    pass


class Entry:
    """What the worker command runs: kind is "module", "script" or "code";
    target the module name, the script path or the code; argv0 the
    sys.argv[0] the program would see; args the rest of sys.argv; path0
    what the interpreter puts first on sys.path (None: nothing)."""

    def __init__(self, kind, target, argv0, args, path0):
        self.kind, self.target, self.argv0, self.args, self.path0 = kind, target, argv0, args, path0
        # The code run_entry runs, read and compiled once by prepare_entry,
        # with the module spec of -m; None: runpy reads it in each worker.
        self.code = None
        self.spec = None
        self.loader = None


# Options of the interpreter that take a value (attached or next argument).
VALUE_OPTIONS = "XW"
FLAG_OPTIONS = "bBdEIOPqsSuvR"


def parse_command(command):
    """Finds the entry point of the worker command as the kernel and the
    interpreter would (the Go side, Interpreter, has validated it)."""
    if not command:
        raise CommandError("no worker command")
    if not PYTHON_NAME.match(os.path.basename(command[0])):
        path = command[0]
        if "/" not in path:
            path = shutil.which(path) or path
        return Entry("script", path, path, command[1:], script_dir(path))
    args = command[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        if arg.startswith("--"):
            if arg == "--check-hash-based-pycs":
                i += 2
                continue
            raise CommandError("unsupported interpreter option %s" % arg)
        j = 1
        while j < len(arg):
            opt = arg[j]
            rest = arg[j + 1:]
            if opt in "mc":
                if rest:
                    value, tail = rest, args[i + 1:]
                elif i + 1 < len(args):
                    value, tail = args[i + 1], args[i + 2:]
                else:
                    raise CommandError("option -%s needs an argument" % opt)
                if opt == "m":
                    return Entry("module", value, value, tail, safe_path0(os.getcwd()))
                return Entry("code", value, "-c", tail, safe_path0(""))
            if opt in VALUE_OPTIONS:
                if not rest:
                    i += 1  # the value is the next argument
                break
            if opt not in FLAG_OPTIONS:
                raise CommandError("unsupported interpreter option -%s" % opt)
            j += 1
        i += 1
    if i >= len(args) or args[i] == "-":
        raise CommandError("the command gives the interpreter no script, -m or -c")
    script = args[i]
    return Entry("script", script, script, args[i + 1:], script_dir(script))


def safe_path0(path0):
    """-P and -I keep the interpreter from putting anything first on
    sys.path; the template got the same flags."""
    if getattr(sys.flags, "safe_path", False) or sys.flags.isolated:
        return None
    return path0


def script_dir(path):
    return safe_path0(os.path.dirname(os.path.realpath(path)))


def set_path0(entry):
    """Gives sys.path the first entry the command's interpreter would have
    given it, in place of this file's directory."""
    if entry.path0 is None:
        return
    if sys.path and not (getattr(sys.flags, "safe_path", False) or sys.flags.isolated):
        sys.path[0] = entry.path0
    else:
        sys.path.insert(0, entry.path0)


# ------------------------------------------------------------- pre-imports

def import_preloads(modules):
    """Imports the application modules baton was asked to preload. They are
    looked up as the command would, and then, as a last resort, in the
    working directory (where servers such as uvicorn and gunicorn look for
    the app, adding it to sys.path themselves at run time)."""
    cwd = os.getcwd()
    appended = cwd not in sys.path
    if appended:
        sys.path.append(cwd)
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        if appended and cwd in sys.path:
            sys.path.remove(cwd)


def server_modules(entry):
    """The modules the entry point would import first anyway, when importing
    them here has no effect but the import: for -m MOD, MOD's packages and
    the import prefix of its code; for a script (a console script such as
    /usr/bin/uvicorn), its easy-install entry point and its import prefix."""
    names = []
    if entry.kind == "module":
        parts = entry.target.split(".")
        for n in range(1, len(parts)):
            names.append(".".join(parts[:n]))
        spec = importlib.util.find_spec(entry.target)
        if spec is not None and spec.submodule_search_locations is not None:
            names.append(entry.target)  # a package: runpy imports it, then runs __main__
            spec = importlib.util.find_spec(entry.target + ".__main__")
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            names.extend(import_prefix(read_source(spec.origin), spec.name))
    elif entry.kind == "script":
        source = read_source(entry.target)
        names.extend(easy_install_module(source))
        names.extend(import_prefix(source, None))
    seen = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return seen


# Modules that servers import lazily in each worker, once it runs (uvicorn's
# Config.load picks its loop and protocol implementations then): imported
# once in the template instead, every worker shares them and skips the
# import. Only for a server the template imported already; a module that
# is not installed (httptools, websockets) is passed over without a word.
LAZY_SERVER_MODULES = {
    "uvicorn": [
        "uvicorn.lifespan.on", "uvicorn.lifespan.off", "uvicorn.loops.auto", "uvicorn.loops.asyncio",
        "uvicorn.loops.uvloop", "uvicorn.protocols.http.auto", "uvicorn.protocols.http.h11_impl",
        "uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.websockets.auto",
        "uvicorn.protocols.websockets.wsproto_impl", "uvicorn.protocols.websockets.websockets_impl",
        "uvicorn.middleware.proxy_headers", "uvicorn.logging",
    ],
    "gunicorn": [
        "gunicorn.arbiter", "gunicorn.glogging", "gunicorn.workers.sync", "gunicorn.workers.gthread",
        "gunicorn.app.wsgiapp",
    ],
    "hypercorn": ["hypercorn.asyncio", "hypercorn.asyncio.run", "hypercorn.config", "hypercorn.run"],
}


def warm_lazy_server_modules():
    """Imports the lazily loaded modules of the servers already imported
    (LAZY_SERVER_MODULES); returns those it imported."""
    done = []
    for server, names in LAZY_SERVER_MODULES.items():
        if server not in sys.modules:
            continue
        for name in names:
            try:
                importlib.import_module(name)
                done.append(name)
            except Exception:  # noqa: BLE001  (not installed: the worker would not use it)
                pass
    return done


def read_source(path):
    with open(path, "rb") as f:
        return f.read(1 << 20)


def easy_install_module(source):
    """Debian's and setuptools' console-script wrappers find their entry
    point through importlib.metadata: '# EASY-INSTALL-ENTRY-SCRIPT:
    'uvicorn==0.17.6','console_scripts','uvicorn''. Returns its module."""
    match = re.search(rb"^# EASY-INSTALL-ENTRY-SCRIPT: *(.+)$", source, re.M)
    if not match:
        return []
    spec, group, name = ast.literal_eval("(" + match.group(1).decode() + ")")
    import importlib.metadata
    dist = importlib.metadata.distribution(spec.partition("==")[0])
    for ep in dist.entry_points:
        if ep.group == group and ep.name == name:
            return [ep.value.partition(":")[0].strip()]
    return []


def import_prefix(source, package):
    """The modules a program imports before it does anything else: its
    leading imports (also inside try:, whose handlers only run if they fail),
    after at most a docstring and assignments of literals. The first other
    statement ends the prefix: from there on importing early could change
    what the program does."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    names = []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and literal(node.value):
            continue
        if isinstance(node, ast.Try) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in node.body):
            names.extend(imported(node.body, package))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.extend(imported([node], package))
            continue
        break
    return names


def literal(value):
    try:
        ast.literal_eval(value)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def imported(nodes, package):
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif node.level == 0 and node.module and node.module != "__future__":
            names.append(node.module)
        elif node.level > 0 and package:
            base = package.rsplit(".", node.level)[0] if node.level <= package.count(".") else None
            if base:
                names.append(base + ("." + node.module if node.module else ""))
    return names


def pre_import(names):
    """Imports what the server would; a failure is no error (the worker
    will import it again and fail or not on its own), only a note."""
    done = []
    for name in names:
        try:
            importlib.import_module(name)
            done.append(name)
        except BaseException as exc:  # noqa: BLE001  (SystemExit included)
            log("not pre-importing %s: %s" % (name, "".join(
                traceback.format_exception_only(type(exc), exc)).strip()))
    return done


# ---------------------------------------------------------------- watchdog

# In a worker whose environment has WATCHDOG_USEC: (interval in seconds,
# socket address); None in the template and in workers without a watchdog.
watchdog = None
armed_loops = {}  # id(loop) -> loop: strong references, so no id is reused


def install_watchdog_hook():
    """Wraps asyncio's _set_running_loop, through which asyncio's loops and
    uvloop's announce that they run, so that a worker's main-thread loop
    pings WATCHDOG=1 from inside the loop: a blocked loop stops the pings.
    uvloop binds the function when it is imported, so this runs before any
    pre-import; it does nothing until a worker sets `watchdog`."""
    original = asyncio.events._set_running_loop

    def _set_running_loop(loop):
        original(loop)
        if loop is not None and watchdog is not None:
            arm(loop)

    asyncio.events._set_running_loop = _set_running_loop
    asyncio._set_running_loop = _set_running_loop


def arm(loop):
    if threading.current_thread() is not threading.main_thread():
        return
    if id(loop) in armed_loops:
        return
    armed_loops[id(loop)] = loop
    interval, address = watchdog
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)

    def ping():
        try:
            sock.sendto(b"WATCHDOG=1", address)
        except OSError:
            pass  # baton's socket full or gone: the next ping tries again
        loop.call_later(interval, ping)

    loop.call_soon(ping)


def watchdog_settings(env):
    """sd_watchdog_enabled(3): WATCHDOG_USEC, for this pid if WATCHDOG_PID
    says so, and a NOTIFY_SOCKET path or abstract name."""
    usec = env.get("WATCHDOG_USEC", "")
    address = env.get("NOTIFY_SOCKET", "")
    if not usec.isdigit() or int(usec) == 0 or not address:
        return None
    if env.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return None
    return int(usec) / 2e6, address


# ---------------------------------------------------------------- template

def single_threaded():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1]) == 1
    return True


def kernel_objects():
    """This process's fds that are sockets or other kernel objects (epoll,
    eventfd, ...), with what each is."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + name)
        except OSError:
            continue  # the directory listing's own fd, closed by now
        if target.startswith(("socket:", "anon_inode:")):
            found[int(name)] = target
    return found


def warn_shared_fds(before):
    """Warns, on stderr, of each socket, event loop or other kernel object
    the imports left open (those not in before, the ones the template
    started with: stdio, the listeners, the control socket): every worker
    inherits the same one (a database connection answering two workers'
    queries mixed, an epoll instance whose registrations collide)."""
    for fd, target in sorted(kernel_objects().items()):
        if before.get(fd) != target:
            log("warning: importing the preload modules left fd %d open (%s); every worker shares it: "
                "open connections and event loops in the worker (lazily, or in the server's startup hook), "
                "not at import" % (fd, target))


def receive(sock, flags):
    """One datagram and the fds it carries (at most 2). socket.recv_fds
    would do, but it drops its flags argument (MSG_DONTWAIT) before 3.13."""
    ancillary = socket.CMSG_LEN(2 * array.array("i").itemsize)
    data, ancdata, _, _ = sock.recvmsg(MAX_MESSAGE, ancillary, flags)
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


class Template:
    def __init__(self, ctrl, entry):
        self.ctrl = ctrl
        self.entry = entry
        self.warned_threads = False

    def serve(self):
        """Answers fork requests until baton closes the control socket.
        The requests already queued are taken together, and one
        intermediate forks the workers of them all: a reload of 64 workers
        costs 65 forks, not 128, and the template's own loop forks once."""
        while True:
            batch, eof = self.receive_batch()
            requests = []
            for data, fds in batch:
                request = self.parse(data, fds)
                if request is not None:
                    requests.append(request)
            try:
                if requests:
                    self.fork_batch(requests)
            finally:
                for _, fds in batch:
                    for fd in fds:
                        os.close(fd)
            if eof:
                return 0

    def receive_batch(self):
        """The next request, waiting for it, and every one queued behind it;
        eof once baton closed the socket."""
        batch = []
        data, fds = receive(self.ctrl, 0)
        while data:
            batch.append((data, fds))
            try:
                data, fds = receive(self.ctrl, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return batch, False
        return batch, True

    def parse(self, data, fds):
        """A fork request as (id, env, stderr fd, go fd), or None when it
        was answered already (refused, or not one)."""
        try:
            request = json.loads(data)
        except ValueError as exc:
            log("ignoring a request that is not JSON: %s" % exc)
            return None
        if request.get("type") != "fork":
            log("ignoring a request of type %r" % request.get("type"))
            return None
        req_id = request.get("id")
        env = request.get("env")
        if len(fds) != 2 or not isinstance(env, list):
            send(self.ctrl, {"type": "fork_failed", "id": req_id,
                             "error": "a fork request needs an env list and 2 fds (stderr, go), got %d fds" % len(fds)})
            return None
        return req_id, env, fds[0], fds[1]

    def fork_batch(self, requests):
        """Double fork: one intermediate process forks a worker for each
        request, reports their pids and exits, so the workers are orphaned
        and adopted by baton, the child subreaper. Then each request gets
        forked, or fork_failed."""
        if not self.warned_threads and not single_threaded():
            self.warned_threads = True
            log("warning: the template runs more than one thread (a preloaded module started one?); "
                "forked workers get only this one, and a lock another thread held stays locked in them")
        gc.freeze()
        sys.stdout.flush()
        sys.stderr.flush()
        report_r, report_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(report_r)
            os.close(report_w)
            for req_id, _, _, _ in requests:
                send(self.ctrl, {"type": "fork_failed", "id": req_id, "error": "fork: %s" % exc})
            return
        if pid == 0:
            code = 70
            try:
                os.close(report_r)
                code = self.intermediate(requests, report_w)
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(report_w)
        self.report(requests, pid, report_r)

    def report(self, requests, pid, report_r):
        """Sends "forked" for each worker once the intermediate is reaped:
        by then the workers are baton's children (the kernel reparents
        before it reports the exit), so go may come at once."""
        report = read_all(report_r)
        os.close(report_r)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        answered = set()
        for line in report.splitlines():
            kind, _, rest = line.partition(" ")
            index, _, value = rest.partition(" ")
            if not index.isdigit() or int(index) >= len(requests) or int(index) in answered:
                continue
            answered.add(int(index))
            req_id = requests[int(index)][0]
            if kind == "forked" and value.isdigit():
                send(self.ctrl, {"type": "forked", "id": req_id, "pid": int(value)})
            else:
                send(self.ctrl, {"type": "fork_failed", "id": req_id, "error": value})
        for index, request in enumerate(requests):
            if index not in answered:
                send(self.ctrl, {"type": "fork_failed", "id": request[0],
                                 "error": "the intermediate process ended with status %d" % code})

    def intermediate(self, requests, report_w):
        """Forks a worker for each request and reports each pid (or why
        not) on report_w, a line each. A worker gets the fds of its own
        request: those of the requests forked before it are closed here
        once their worker has them, the others by the worker itself."""
        os.setpgid(0, 0)
        pending = set()
        for _, _, stderr_fd, go_fd in requests:
            pending.update((stderr_fd, go_fd))
        for index, (_, env, stderr_fd, go_fd) in enumerate(requests):
            try:
                pid = os.fork()
            except OSError as exc:
                os.write(report_w, ("failed %d fork: %s\n" % (index, exc)).encode())
                continue
            if pid == 0:
                code = 70
                try:
                    os.close(report_w)
                    for fd in pending - {stderr_fd, go_fd}:
                        os.close(fd)
                    code = Worker(self.ctrl, self.entry, env, stderr_fd, go_fd).run()
                except BaseException:  # noqa: BLE001
                    traceback.print_exc()
                finally:
                    os._exit(code)
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass  # the worker did it first, or has exited already
            os.close(stderr_fd)
            os.close(go_fd)
            pending.difference_update((stderr_fd, go_fd))
            os.write(report_w, ("forked %d %d\n" % (index, pid)).encode())
        return 0


def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks).decode(errors="replace")
        chunks.append(chunk)


# ------------------------------------------------------------------ worker

class Worker:
    def __init__(self, ctrl, entry, env, stderr_fd, go_fd):
        self.ctrl, self.entry, self.env = ctrl, entry, env
        self.stderr_fd, self.go_fd = stderr_fd, go_fd

    def run(self):
        """Waits for go, then becomes the worker. Until go, nothing of the
        command runs: a worker baton aborts exits 0 and has done nothing."""
        self.ctrl.close()
        os.dup2(self.stderr_fd, 2)
        os.close(self.stderr_fd)
        try:
            os.setpgid(0, 0)
        except OSError:
            pass  # the intermediate did it first
        restore_signals()
        # Until go, SIGINT (baton's quick shutdown) ends the worker quietly
        # rather than as a KeyboardInterrupt with a traceback.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        go = os.read(self.go_fd, 1)
        os.close(self.go_fd)
        if not go:
            return 0
        signal.signal(signal.SIGINT, STARTUP_SIGNALS.get(signal.SIGINT, signal.default_int_handler))
        env = dict(kv.split("=", 1) for kv in self.env if "=" in kv)
        if not self.parent_is_master(env):
            return 0
        os.environ.clear()
        os.environ.update(env)
        if "LISTEN_FDS" in env:
            os.environ["LISTEN_PID"] = str(os.getpid())
        global watchdog
        watchdog = watchdog_settings(os.environ)
        gc.enable()
        return run_entry(self.entry)

    @staticmethod
    def parent_is_master(env):
        """Dies with the master from now on (PR_SET_PDEATHSIG; set earlier,
        the intermediate's exit would have fired it), unless the master is
        gone already."""
        if LIBC is not None:
            if LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                log("cannot set the parent-death signal: %s" % os.strerror(ctypes.get_errno()))
        master = env.get("BATON_MASTER_PID") or os.environ.get("BATON_MASTER_PID")
        if master and master.isdigit() and os.getppid() != int(master):
            log("the master (pid %s) is gone; not starting" % master)
            return False
        return True


def restore_signals():
    for sig, handler in STARTUP_SIGNALS.items():
        if handler is None:
            continue
        try:
            signal.signal(sig, handler)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.set_wakeup_fd(-1)


def prepare_entry(entry):
    """Reads and compiles the entry point's code once, in the template,
    where each worker would otherwise do it: a script is not cached as
    bytecode, so every worker read and compiled it again (measured: 1.3 ms
    and 180 copied pages each for /usr/bin/uvicorn, a sixth of a forked
    worker's start). Only an optimisation: where it cannot be done as the
    interpreter does (a directory or zip to run, a Python whose runpy lacks
    the helpers used) or fails (the worker then reports the error as it
    would have), each worker runs the entry through runpy as before.
    Returns whether the code is prepared."""
    try:
        if entry.kind == "module":
            if not (hasattr(runpy, "_get_module_details") and hasattr(runpy, "_run_code")):
                return False
            _, entry.spec, entry.code = runpy._get_module_details(entry.target)
        elif entry.kind == "script":
            import pkgutil
            if pkgutil.get_importer(entry.target) is not None:
                return False  # a directory or zip file: run_path imports its __main__
            entry.code, entry.loader = compile_script(entry.target)
        else:
            entry.code = compile(entry.target, "<string>", "exec")
    except BaseException as exc:  # noqa: BLE001  (SystemExit from a package's import too)
        log("not preparing the entry point's code (each worker reads it): %s" % exc.__class__.__name__)
        entry.code = entry.spec = None
        return False
    return True


def compile_script(path):
    """The code of a script file as the interpreter reads it (bytecode if
    it is a compiled file, else its source compiled), and the loader it
    names in __main__."""
    import importlib.machinery
    import io
    import pkgutil
    path = os.path.abspath(path)
    with io.open_code(path) as f:
        code = pkgutil.read_code(f)
    if code is not None:
        return code, importlib.machinery.SourcelessFileLoader("__main__", path)
    with io.open_code(path) as f:
        code = compile(f.read(), path, "exec")
    return code, importlib.machinery.SourceFileLoader("__main__", path)


def fresh_main():
    """A new __main__ module as the interpreter makes it before it runs a
    program (builtins, empty annotations, BuiltinImporter as its loader),
    in sys.modules."""
    import builtins
    import importlib.machinery
    import types
    main = types.ModuleType("__main__")
    main.__dict__.update(__builtins__=builtins, __annotations__={},
                         __loader__=importlib.machinery.BuiltinImporter)
    sys.modules["__main__"] = main
    return main


def run_prepared(entry):
    """Runs the prepared code as the interpreter runs its program: -m as
    runpy._run_module_as_main (in __main__ itself, sys.argv[0] the module's
    file), a script with __file__ its absolute path and a file loader, -c
    as it is."""
    main = fresh_main()
    if entry.kind == "module":
        sys.argv[0] = entry.spec.origin
        runpy._run_code(entry.code, main.__dict__, None, "__main__", entry.spec)
        return
    if entry.kind == "script":
        main.__file__ = entry.loader.path
        main.__cached__ = None
        main.__loader__ = entry.loader
    exec(entry.code, main.__dict__)


def run_entry(entry):
    """Runs the command's entry point as its interpreter would and returns
    the exit code; ends like the interpreter (non-daemon threads joined,
    atexit handlers run, streams flushed), but the caller leaves with
    os._exit, skipping the finalization that would write to every object."""
    code = 0
    try:
        if entry.code is not None:
            sys.argv = [entry.argv0] + entry.args
            run_prepared(entry)
        elif entry.kind == "module":
            sys.argv = [entry.argv0] + entry.args
            runpy.run_module(entry.target, run_name="__main__", alter_sys=True)
        elif entry.kind == "script":
            sys.argv = [entry.argv0] + entry.args
            runpy.run_path(entry.target, run_name="__main__")
        else:
            sys.argv = [entry.argv0] + entry.args
            run_code(entry.target)
    except SystemExit as exc:
        code = exit_code(exc)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    code = finish(code)
    if code == -signal.SIGINT:
        # As the interpreter does: die of SIGINT, so the parent sees why.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    return code


def finish(code):
    try:
        threading._shutdown()
    except BaseException:  # noqa: BLE001
        pass
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            if code == 0:
                code = 120  # the interpreter's code when flushing fails
    return code


def run_code(code):
    main = fresh_main()
    exec(compile(code, "<string>", "exec"), main.__dict__)


def exit_code(exc):
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


# -------------------------------------------------------------------- main

def parse_args(argv):
    preload = []
    i = 0
    while i < len(argv) and argv[i] != "--":
        if argv[i] == "--preload" and i + 1 < len(argv):
            preload.append(argv[i + 1])
            i += 2
            continue
        raise CommandError("usage: forkserver.py [--preload MODULE]... -- COMMAND... (got %r)" % argv[i])
    if i >= len(argv):
        raise CommandError("usage: forkserver.py [--preload MODULE]... -- COMMAND... (no --)")
    return preload, argv[i + 1:]


def control_socket():
    fd = int(os.environ.pop("BATON_FORKSERVER_FD"))
    ctrl = socket.socket(fileno=fd)
    ctrl.set_inheritable(False)
    return ctrl


def main():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        ctrl = control_socket()
    except (KeyError, ValueError, OSError) as exc:
        log("no control socket in BATON_FORKSERVER_FD: %s (this program is started by baton)" % exc)
        return 2
    try:
        preload, command = parse_args(sys.argv[1:])
        entry = parse_command(command)
        set_path0(entry)
        install_watchdog_hook()
        before = kernel_objects()
        start = time.monotonic()
        import_preloads(preload)
        servers = pre_import(server_modules_or_none(entry))
        servers += warm_lazy_server_modules()
        prepare_entry(entry)
        seconds = time.monotonic() - start
    except BaseException as exc:  # noqa: BLE001  (SystemExit in an import too)
        message = error_message(exc)
        sys.stderr.write(message["traceback"])
        sys.stderr.flush()
        send(ctrl, message)
        return 1
    gc.freeze()
    release_free_memory()
    warn_shared_fds(before)
    send(ctrl, {"type": "ready", "pid": os.getpid(), "python": platform.python_version(),
                "preloaded": preload, "server_modules": servers,
                "import_seconds": round(seconds, 6)})
    return Template(ctrl, entry).serve()


def release_free_memory():
    """Gives the C heap's free pages back to the system (glibc's
    malloc_trim): what the imports allocated and freed. Left in place, every
    worker would inherit those pages, and each would copy the ones its own
    allocations reuse, while the template kept the originals."""
    if LIBC is None:
        return
    try:
        LIBC.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# Servers whose modules must not be imported before the fork: importing
# them opens what every worker would then share. daphne's cli imports
# daphne.server, which installs Twisted's reactor and with it an epoll
# instance: forked workers registering their listener in that one instance
# fail with EEXIST ("Listen failure: [Errno 17] File exists").
NOT_PRE_IMPORTED = ("daphne", "twisted")


def server_modules_or_none(entry):
    try:
        names = server_modules(entry)
    except Exception as exc:  # noqa: BLE001  (only an optimisation)
        log("not pre-importing the server's modules: %s" % exc)
        return []
    return [name for name in names if name.split(".")[0] not in NOT_PRE_IMPORTED]


if __name__ == "__main__":
    sys.exit(main())
