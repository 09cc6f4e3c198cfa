# gunicorn settings for `accident-service serve` and the Docker image.
import os
import sys

# Workers count into files in PROMETHEUS_MULTIPROC_DIR, so /metrics adds them all up (prometheus_client
# multiprocess mode). Set first, before anything below imports the service: prometheus_client picks its mode when
# imported, and workers forked from a master that imported it without this count in memory, each for itself (the
# master imports the app before any hook runs with --preload). Unless the operator set one, a directory is made
# here and removed on exit (on_exit; or at the process's exit when gunicorn never got to listen, which runs no
# hook); one the operator set is theirs and kept, its files of an earlier run removed once a fresh start
# listens (when_ready), as prometheus_client requires. The marker is an environment variable, not a global, so it
# survives a reload (HUP re-reads this file).
_CREATED_METRICS_DIR = "ACCIDENT_SERVICE_CREATED_METRICS_DIR"
_listening = False  # when_ready ran: the directory is on_exit's to remove (not after a binary upgrade, USR2)


def _remove_unless_listening(master_pid):
    """At exit of the process that made the directory (not of a worker forked from it), if gunicorn never
    listened: a start that could not bind, or stopped before, runs no on_exit."""
    if os.getpid() == master_pid and not _listening:
        _remove_created_metrics_dir()


if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import atexit
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[_CREATED_METRICS_DIR] = tempfile.mkdtemp(
        prefix="accident-metrics-")
    atexit.register(_remove_unless_listening, os.getpid())


def _remove_created_metrics_dir():
    import shutil

    created = os.environ.get(_CREATED_METRICS_DIR)
    if created and created == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(created, ignore_errors=True)


def _checked_environment():
    """The service's settings and the variables gunicorn and prometheus_client read, checked together before gunicorn
    does anything (accident_service.settings.serving_environment): each mistake named, a line each, then exit 2.
    Before gunicorn has written a pid file or listened: only the directory made above to remove."""
    from accident_service.settings import SettingsError, serving_environment

    try:
        return serving_environment(os.environ.get("BIND", "0.0.0.0:8000"))
    except SettingsError as exc:
        print(exc.report(), file=sys.stderr, flush=True)
        _remove_created_metrics_dir()
        sys.exit(2)


_checked = _checked_environment()
bind = _checked.bind
workers = _checked.workers
threads = _checked.threads
worker_class = "gthread"
timeout = 30
graceful_timeout = 20
# No control socket (gunicorn 25.1+, for its `gunicornc` tool, which nothing here uses): its default path,
# $XDG_RUNTIME_DIR/gunicorn.ctl or $HOME/.gunicorn/gunicorn.ctl, is one per user, so a second instance on the
# host took the first one's over, and in the image $HOME is not writable. Older gunicorns ignore the name.
control_socket_disable = True
accesslog = "-"
# The query string carries WeChat signatures and openids: log the path only; then the request id
# the service echoed (X-Request-Id), which its own lines about the request carry too.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms %({x-request-id}o)s'


def _service_formatter(log_format):
    """The formatter class the service's own lines use (logs.FORMATTERS), by LOG_FORMAT."""
    from accident_service.logs import FORMATTERS

    return FORMATTERS[log_format]


# gunicorn's own lines (workers booting, the access log) in the service's format, masked like its lines (a
# caller's request id, a probe's path), at its LOG_LEVEL; with JSON every line of the process is one object.
# The root logger is left to the service (no handler here).
_format, _level = _checked.settings.LOG_FORMAT, _checked.settings.LOG_LEVEL  # upper case already


class _NoEmptyListeningLine:
    """Drops gunicorn's "Listening at:  (pid)" naming no socket: with a socket per worker the master holds none, and
    when_ready says where it listens (acceptance pass: the empty line puzzled an operator)."""

    def filter(self, record) -> bool:
        # msg may be an exception (gunicorn logs a worker's SyntaxError so under --reload; review)
        return not (isinstance(record.msg, str) and record.msg.startswith("Listening at:") and record.args
                    and not record.args[0])


_handler = {"class": "logging.StreamHandler", "formatter": "service"}
logconfig_dict = {
    "formatters": {"service": {"()": _service_formatter(_format)}},
    "filters": {"request_id": {"()": "accident_service.request_ids.AccessLineRequestId"},
                "path": {"()": "accident_service.logs.AccessLinePathAsSent"},
                "listening": {"()": _NoEmptyListeningLine}},
    "handlers": {"error_console": {**_handler, "stream": "ext://sys.stderr", "filters": ["listening"]},
                 "console": {**_handler, "stream": "ext://sys.stdout", "filters": ["request_id", "path"]}},
    "loggers": {"gunicorn.error": {"level": _level, "handlers": ["error_console"], "propagate": False},
                "gunicorn.access": {"level": _level, "handlers": ["console"], "propagate": False}},
    "root": {"level": _level, "handlers": []},
}


def on_starting(server):
    """A listening socket per worker where gunicorn binds a TCP port itself (:func:`_sockets_per_worker`)."""
    if _sockets_per_worker(server):
        _refuse_a_port_in_use(server)
        server.cfg.set("reuse_port", True)
        _spawn_returns_once_the_worker_listens(server)


def _spawn_returns_once_the_worker_listens(server):
    """At a reload the master tells the old workers to stop right after forking the new ones, and each old one then
    leaves the port's group: before the new ones had bound their sockets, connections were refused for a few
    milliseconds (re-review; 11 in a reload of two workers). The master waits (at most 5 s) for each new worker's
    word that its socket listens (post_fork, or the pipe closing if it died first), and no longer than a signal of
    its own (TERM, CHLD) is waiting: workers that cannot bind held a TERM back 5 s each (third review)."""
    import select
    import time

    spawn = server.spawn_worker

    def spawn_worker():
        read_end, write_end = os.pipe()
        server._listening_pipe = (read_end, write_end)
        master = os.getpid()
        try:
            return spawn()  # a worker leaves it by SystemExit, when it exits (its ends closed in post_fork)
        finally:
            if os.getpid() == master:
                server._listening_pipe = None
                os.close(write_end)
                deadline = time.monotonic() + 5.0
                while server.SIG_QUEUE.empty() and time.monotonic() < deadline:
                    if select.select([read_end], [], [], min(0.05, max(deadline - time.monotonic(), 0)))[0]:
                        break
                os.close(read_end)

    server.spawn_worker = spawn_worker


def post_fork(server, worker):
    # In the worker, its socket listening (gunicorn binds it just before this hook).
    pipe = getattr(server, "_listening_pipe", None)
    if pipe:
        os.close(pipe[0])
        os.write(pipe[1], b"1")
        os.close(pipe[1])


def on_reload(server):
    # A reload (HUP) reads this file again, reuse_port with it; the workers it spawns must listen as the others do.
    if _sockets_per_worker(server):
        server.cfg.set("reuse_port", True)


def _sockets_per_worker(server) -> bool:
    """Whether each worker should listen on a socket of its own (SO_REUSEPORT), the kernel spreading new
    connections over them.

    On the one socket gunicorn shares, the worker that wakes first takes a connection, and kept-alive connections
    opened together (a load balancer's pool, wrk's 16) all stayed with one gthread worker in about a third of the
    runs: it did the work on one core while the other idled (650 against 1,110 pushes/s, measured on 2 cores).
    Not for one worker (nothing to spread; between its exit and its successor's bind, a max_requests restart left
    the port without a socket), a unix socket, an inherited or systemd's descriptor, or port 0 (each worker would
    take a port of its own): gunicorn shares those as before. A worker's socket goes with it: connections waiting
    to be accepted on it when it stops or dies are reset, and their senders retry (the platform does); a worker
    that hangs keeps its share of new connections until --timeout ends it.
    """
    if server.LISTENERS or server.master_pid or os.environ.get("LISTEN_FDS"):  # sockets handed over (pre_exec)
        return False
    if server.cfg.workers == 1:
        return False
    return all(isinstance(address, tuple) and address[1] for address in server.cfg.address)


def pre_exec(server):
    """A binary upgrade (USR2): gunicorn hands the new master the old master's sockets, and with a socket per worker
    there are none (the new master would stop at the empty list). It gets one made here, beside the workers' ones
    (SO_REUSEPORT too), which its workers share as gunicorn's do; its next restart listens per worker again."""
    if server.cfg.reuse_port:
        from gunicorn import sock

        server.LISTENERS = sock.create_sockets(server.cfg, server.log)


def _refuse_a_port_in_use(server) -> None:
    """Stop, as gunicorn does for its shared socket, when another program listens on the port.

    The kernel lets sockets with SO_REUSEPORT of the same user share a port, so a second instance started by
    mistake (or before the old one has stopped) would serve beside the first: the port is bound once without it,
    with gunicorn's retries, before any worker binds it with it."""
    import socket
    import time

    for address in server.cfg.address:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        for attempt in range(5):
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(address)
                    break
                except OSError as exc:
                    server.log.error("connection to %s failed: %s", address, exc)
            if attempt < 4:
                time.sleep(1)
        else:
            server.log.error("Can't connect to %s", address)
            sys.exit(1)


def when_ready(server):
    """Listening: the made directory is on_exit's to remove now. An operator's directory loses its files of an
    earlier run here, not before: a second start that cannot bind (a mistake, a deploy starting the new one before
    the old has stopped) must not delete a running instance's files. Not at a binary upgrade (USR2), whose old
    master still runs."""
    global _listening
    _listening = True
    if server.cfg.reuse_port:  # gunicorn's own "Listening at" names no socket then
        server.log.info("Listening at: %s, a socket per worker", ", ".join(f"{host}:{port}" for host, port in
                                                                         server.cfg.address))
    operator_dir = None if os.environ.get(_CREATED_METRICS_DIR) else _checked.metrics_dir
    if operator_dir and not server.master_pid:
        for name in os.listdir(operator_dir):
            if name.endswith(".db"):
                os.remove(os.path.join(operator_dir, name))


def on_exit(server):
    # After a binary upgrade (USR2) the new master has the directory only if gunicorn passed it on (it passes the
    # environment as it was before this file ran, as it was at the last reload, HUP): then that one removes it.
    inherited = server.reexec_pid and (
        server.cfg.env_orig.get("PROMETHEUS_MULTIPROC_DIR") == os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    if not inherited:
        _remove_created_metrics_dir()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """Keep the loaded app out of the cyclic garbage collector's full passes (``gc.freeze``).

    A worker holds about 150,000 objects once the service is imported (Flask, SQLAlchemy, wechatpy,
    Pillow, boto3 …), none of them garbage. Pushes from thousands of drivers leave long-lived state
    behind (each sender's intake window), so full collections come every few thousand pushes, and each
    one walked all of them while every thread of the worker waited: 50 ms, measured, against a
    webhook answered in 1–20 ms. Frozen, they are skipped; what the requests create is still collected.
    """
    import gc

    gc.freeze()
    if worker.cfg.reuse_port:
        _leave_the_port_when_told_to_stop(worker)


def _leave_the_port_when_told_to_stop(worker):
    """A worker told to stop (SIGTERM: a reload, its master stopping; max_requests) closes its own socket as its main
    loop ends, one pass after the signal, so the kernel stops handing it connections. gthread closes its sockets only
    as it exits, after its requests and kept-alive connections (2 s, up to graceful_timeout): left in the port's group
    meanwhile, its socket took a share of new connections that no one accepted, reset when it exited (review: 4-7 a
    reload). Closed from gthread's own last set_accept_enabled(False), outside any batch of poller events: closed from
    within one (a review's first mend), an event of the same batch still named it, and accept on it killed the worker.
    """
    set_accept_enabled = worker.set_accept_enabled

    def stop_accepting_and_leave(enabled):
        # gthread calls this with False as its main loop ends (alive False: SIGTERM, max_requests), outside any
        # batch of poller events: none can still name the listener then (accept on a closed one killed the worker).
        set_accept_enabled(enabled)
        if not enabled and not worker.alive:
            for listener in worker.sockets:
                listener.close()

    worker.set_accept_enabled = stop_accepting_and_leave
