# gunicorn settings for `accident-service serve` and the Docker image.
import os

bind = os.environ.get("BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = 30
graceful_timeout = 20
accesslog = "-"
# The query string carries WeChat signatures and openids: log the path only.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'

# Workers count into files here, so /metrics adds them all up (prometheus_client multiprocess mode).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="accident-metrics-")


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
