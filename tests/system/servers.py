"""Real processes for end-to-end tests: gunicorn running mlapi, a private redis-server,
and a TCP proxy that can cut a connection to a real service on demand."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
SECRET = "end-to-end-secret-key-of-at-least-32-bytes"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout=30.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class Gunicorn:
    """mlapi under gunicorn exactly as deployed: ``gunicorn -c gunicorn.conf.py wsgi:app``."""

    def __init__(self, workdir, env=None, name="mlapi"):
        self.workdir = Path(workdir) / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.workdir / "server.log"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "MLAPI_INSTANCE_PATH": str(self.workdir.parent / "instance"),
            "MLAPI_SECRET_KEY": SECRET,
            "MLAPI_PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
            "PROMETHEUS_MULTIPROC_DIR": str(self.workdir / "prometheus"),
            "GUNICORN_GRACEFUL_TIMEOUT": "10",
        }
        self.env.update(env or {})
        self.process = None
        self.base = f"http://127.0.0.1:{self.port}"

    def flask(self, *args, input=None):
        """Run ``flask --app wsgi ARGS`` with this server's environment."""
        env = {k: v for k, v in self.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        return subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", *args],
            cwd=ROOT,
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self):
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._live, timeout=60, what=f"gunicorn on port {self.port}")
        # One worker answering is not all of them booted: wait for the rest too.
        scaled = self.env.get("MLAPI_REDIS_URL") and self.env.get("WEB_CONCURRENCY")
        workers = int(scaled) if scaled else 1
        wait_until(
            lambda: len(self.worker_pids()) >= workers, timeout=60, what=f"{workers} workers"
        )
        return self

    def _live(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited early:\n{self.log_path.read_text()[-4000:]}")
        try:
            return requests.get(self.url("/health/live"), timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def url(self, path):
        return self.base + path

    def token(self, username, password):
        response = requests.post(
            self.url("/token"), data={"username": username, "password": password}, timeout=10
        )
        response.raise_for_status()
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def assert_unready(self, check, within):
        """Readiness answers 503 within ``within`` seconds naming ``check``; liveness stays 200."""
        started = time.monotonic()
        ready = requests.get(self.url("/health/ready"), timeout=10)
        assert time.monotonic() - started < within
        assert ready.status_code == 503
        assert ready.json()["checks"][check]["status"] == "fail"
        assert requests.get(self.url("/health/live"), timeout=10).status_code == 200

    def assert_degraded(self, check, within):
        """Readiness answers 200 "degraded" within ``within`` seconds, ``check`` failing."""
        started = time.monotonic()
        ready = requests.get(self.url("/health/ready"), timeout=10)
        assert time.monotonic() - started < within
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"][check]["status"] == "fail"

    def wait_ready(self, timeout=10):
        """Until readiness is 200 with every check passing (not merely "degraded")."""
        wait_until(
            lambda: requests.get(self.url("/health/ready"), timeout=10).json()["status"] == "ready",
            timeout=timeout,
            interval=0.2,
            what="readiness to recover",
        )

    def worker_pids(self):
        import psutil

        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log_file", None):
            self.log_file.close()
        return self.process.returncode if self.process else None

    def log_lines(self):
        """Every JSON log line the server wrote (non-JSON lines are kept as text)."""
        lines = []
        for raw in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"text": raw})
        return lines


class RedisServer:
    """A private redis-server the test may stop, restart and pause."""

    def __init__(self, workdir):
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.workdir = Path(workdir)
        self.process = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._up, timeout=10, what="redis-server")
        return self

    def _up(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *parts):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2).execute_command(*parts)

    def scan_keys(self):
        """Every key in the server's databases 0-15, found with SCAN."""
        import redis

        found = []
        for db in range(16):
            client = redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=2)
            found += client.scan_iter(count=1000)
        return found

    def freeze(self):
        """SIGSTOP: connections stay open and the kernel accepts new ones; nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self):
        self.process.send_signal(signal.SIGCONT)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            self.process.wait(timeout=10)


class TCPProxy:
    """Forward 127.0.0.1:<port> to a real service; ``cut()`` drops every connection
    and refuses new ones until ``restore()``: a database outage without stopping it."""

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._open = threading.Event()
        self._open.set()
        self._conns = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self):
        self._open.clear()
        with self._lock:
            for sock in self._conns:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass
            self._conns.clear()

    def restore(self):
        self._open.set()

    def close(self):
        self._stop = True
        self.cut()
        self._listener.close()


class PostgresServer:
    """A private PostgreSQL cluster (initdb into a temporary folder, trust auth, a free port)
    that the test may stop, restart, or freeze with SIGSTOP.

    initdb refuses to run as root: as root the cluster runs as the ``postgres`` user.
    """

    def __init__(self):
        self.bin = Path(os.environ.get("MLAPI_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="mlapi-pg-"))
        self.datadir = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.process = None
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        if self.user:
            shutil.chown(self.root, self.user)

    @classmethod
    def available(cls):
        """None when a cluster can be started here, else the reason it cannot."""
        binary = Path(os.environ.get("MLAPI_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
        if not (binary / "initdb").exists():
            return f"PostgreSQL server binaries not found in {binary} (set MLAPI_TEST_PG_BIN)"
        if os.geteuid() == 0:
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root without a postgres user to run initdb as"
        return None

    def _run(self, *args):
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            user=self.user,
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self):
        if not self.datadir.exists():
            self._run(
                "initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                "--no-sync", "-E", "UTF8",
            )  # fmt: skip
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.datadir),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=50",
            ],  # fmt: skip
            user=self.user,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._up, timeout=30, what="postgres")
        return self

    def _up(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"postgres exited early:\n{self.log_path.read_text()[-2000:]}")
        import psycopg

        try:
            psycopg.connect(
                f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", connect_timeout=2
            ).close()
            return True
        except psycopg.OperationalError:
            return False

    def _processes(self):
        import psutil

        parent = psutil.Process(self.process.pid)
        return [parent, *parent.children(recursive=True)]

    def freeze(self):
        """SIGSTOP the postmaster and every backend: the kernel still accepts and
        acknowledges packets, but nothing answers (a paused VM). The postmaster stops first,
        so no backend forked meanwhile escapes."""
        import psutil

        postmaster = psutil.Process(self.process.pid)
        postmaster.send_signal(signal.SIGSTOP)
        time.sleep(0.1)
        for proc in postmaster.children(recursive=True):
            proc.send_signal(signal.SIGSTOP)

    def thaw(self):
        for proc in self._processes():
            proc.send_signal(signal.SIGCONT)

    def stop(self):
        """Fast shutdown (SIGINT): sessions are ended, as in a restart."""
        if self.process and self.process.poll() is None:
            self.thaw()
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log_file", None):
            self.log_file.close()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
