"""The whole fedgov stack on one machine, as real processes on loopback.

`simulate`, the integration tests and the round benchmark start Redis, the web server
(gunicorn), Celery workers and partner agents through these helpers: each starts the real
program on a free port, waits until it answers, and stops it (SIGTERM, then SIGKILL) on
exit. Nothing here is a stand-in.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALL_QUEUES = "fedgov.default,fedgov.rounds,fedgov.aggregation,fedgov.deadlines"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}\n{tail}")
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def kill_hard(proc: subprocess.Popen) -> None:
    """SIGKILL the whole process group (a worker and its pool children): a crash."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def redis_binary() -> str:
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if not path:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server (make test and make run do it)")
    return path


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    port: int | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _spawn(name: str, cmd: list[str], env: dict, log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    fh = log.open("ab")
    popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    fh.close()
    return Proc(name, popen, log)


def django_env(**extra: str | None) -> dict:
    """The environment for a child process: the same settings, database and var directory
    as this process, so every process sees the same rows and the same ledger key."""
    from django.conf import settings
    from django.db import connection

    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = os.environ.get("DJANGO_SETTINGS_MODULE", "fedgov.settings")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["FEDGOV_VAR_DIR"] = str(settings.VAR_DIR)
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        env["DATABASE_URL"] = f"postgres://{db['USER']}:{db.get('PASSWORD') or ''}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def start_redis(log_dir: Path, port: int | None = None) -> Proc:
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fedgov-redis-", dir=log_dir))
    proc = _spawn(
        f"redis-{port}",
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        dict(os.environ),
        log_dir,
    )
    proc.port = port
    wait_for_port(port, proc=proc.popen, log=proc.log)
    return proc


def start_web(env: dict, log_dir: Path, port: int | None = None, *, workers: int = 2, threads: int = 32) -> Proc:
    port = port or free_port()
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    proc = _spawn(
        f"web-{port}",
        [gunicorn, "fedgov.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads),
         "--worker-class", "gthread", "--timeout", "120", "--graceful-timeout", "5"],
        env,
        log_dir,
    )
    proc.port = port
    wait_for_port(port, proc=proc.popen, log=proc.log)
    return proc


def supervised(cmd: list[str]) -> list[str]:
    """Restart the command whenever it exits, as systemd's Restart=always does in a
    deployment: a Celery worker exits on some broker failures and must come back."""
    import shlex

    return ["bash", "-c", f"while true; do {shlex.join(cmd)}; sleep 1; done"]


def start_worker(env: dict, log_dir: Path, *, name: str = "worker", queues: str = ALL_QUEUES, concurrency: int = 2, supervise: bool = True) -> Proc:
    cmd = [sys.executable, "-m", "celery", "-A", "fedgov", "worker", "-Q", queues, "-n", f"{name}@%h", "--concurrency", str(concurrency),
           "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--prefetch-multiplier", "1"]
    return _spawn(name, supervised(cmd) if supervise else cmd, env, log_dir)


def start_beat(env: dict, log_dir: Path) -> Proc:
    cmd = [sys.executable, "-m", "celery", "-A", "fedgov", "beat", "--loglevel", "INFO", "--schedule", str(log_dir / "celerybeat-schedule")]
    return _spawn("beat", supervised(cmd), env, log_dir)


def start_agent(
    env: dict, log_dir: Path, *, name: str, server: str, token: str, data: Path, state_dir: Path, dropout: float = 0.0,
    poll_wait: float = 5.0, send_retry: float | None = None, coordinator_key: str | None = None, python: str | None = None,
) -> Proc:
    """`python`: the interpreter to run it with (default this one's), e.g. a partner's own
    virtualenv holding only requirements-agent.txt."""
    agent_env = {k: v for k, v in env.items() if k != "DJANGO_SETTINGS_MODULE"}  # the agent has no Django
    extra = ["--send-retry", str(send_retry)] if send_retry is not None else []
    if coordinator_key is not None:
        extra += ["--coordinator-key", coordinator_key]
    return _spawn(
        name,
        [python or sys.executable, "-m", "federation.agent", "--server", server, "--token", token, "--data", str(data), "--state", str(state_dir),
         "--dropout", str(dropout), "--poll-wait", str(poll_wait), *extra],
        agent_env,
        log_dir,
    )


@dataclass
class Stack:
    """Handles on what a LocalStack started (or found already running)."""

    log_dir: Path
    redis_url: str
    server: str
    env: dict
    procs: dict[str, Proc] = field(default_factory=dict)
    exit: ExitStack = field(default_factory=ExitStack)

    def add(self, proc: Proc) -> Proc:
        self.procs[proc.name] = proc
        self.exit.callback(stop, proc.popen)
        return proc

    def agent(self, **kwargs) -> Proc:
        """A partner agent talking to this stack's web server (or to `server=`, e.g. a proxy)."""
        kwargs.setdefault("server", self.server)
        return self.add(start_agent(self.env, self.log_dir, **kwargs))

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{proc.tail()}" for name, proc in self.procs.items())


def redis_reachable(url: str) -> bool:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    return port_open(parsed.port or 6379, parsed.hostname or "127.0.0.1")


def use_broker(redis_url: str) -> None:
    """Point this process's Celery app at `redis_url`: tasks it enqueues (a round request's
    on_commit start, say) must reach the workers this stack started."""
    from fedgov.celery import app

    app.conf.broker_url = redis_url
    # This process only enqueues (results go to the database), so no result backend: a
    # backend bound to an earlier stack's Redis would keep trying to reconnect to it.
    app.conf.result_backend = "disabled://"
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)
    app.set_current()  # shared tasks resolve through the current app
    # Drop connections made to the old broker; the next publish opens new ones.
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None


@contextmanager
def local_stack(*, log_dir: Path, redis_url: str | None = None, server: str | None = None, workers: int = 1, beat: bool = True, extra_env: dict | None = None):
    """Start what is not already running: Redis (unless redis_url answers), the web server
    (unless server is given), Celery workers and beat. Stops what it started on exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as outer:
        procs: dict[str, Proc] = {}
        if not redis_url or not redis_reachable(redis_url):
            redis = start_redis(log_dir)
            outer.callback(stop, redis.popen)
            procs[redis.name] = redis
            redis_url = f"redis://127.0.0.1:{redis.port}/0"
        env = django_env(REDIS_URL=redis_url, **(extra_env or {}))
        use_broker(redis_url)
        if server is None:
            web = start_web(env, log_dir)
            outer.callback(stop, web.popen)
            procs[web.name] = web
            server = f"http://127.0.0.1:{web.port}"
        stack = Stack(log_dir=log_dir, redis_url=redis_url, server=server, env=env, procs=procs)
        outer.enter_context(stack.exit)
        for i in range(workers):
            stack.add(start_worker(env, log_dir, name=f"worker{i + 1}"))
        if beat:
            stack.add(start_beat(env, log_dir))
        yield stack


def child_pids(pid: int) -> list[int]:
    """The direct children of process `pid`, read from /proc (Linux)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def descendant_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in child_pids(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def kill_supervised_child(proc: Proc, *, wait: float = 15.0) -> int | None:
    """SIGKILL the program a `supervised` loop runs (a Celery worker with its pool children,
    or beat), as an OOM kill of its cgroup would; the loop, like systemd, starts it again
    about a second later. When the loop is between two runs, waits up to `wait` seconds for
    the program. Returns the program's pid, or None when none came."""
    deadline = time.monotonic() + wait
    while True:
        programs = [p for p in child_pids(proc.popen.pid) if "sleep" not in _cmdline(p)]
        if programs or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if not programs:
        return None
    main = programs[0]
    for pid in [main, *descendant_pids(main)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return main


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def restart_redis(stack: Stack, *, delay: float = 1.0) -> Proc:
    """SIGKILL the stack's Redis and, after `delay`, start a new one on the same port, as a
    supervisor would. The new one starts in an empty directory: what the old one held
    (queued tasks, throttle counters) is gone, and the beat sweep must re-drive lost work."""
    name = next(n for n in stack.procs if n.startswith("redis-"))
    old = stack.procs.pop(name)
    kill_hard(old.popen)
    time.sleep(delay)
    new = start_redis(stack.log_dir, port=old.port)
    stack.add(new)
    return new
