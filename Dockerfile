FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    APP_ENV=production AUTO_MIGRATE=false DATA_DIR=/var/lib/accident-service \
    ACCIDENT_SERVICE_CONFIG_DIR=/app/config BIND=0.0.0.0:8000

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY accident_service ./accident_service
RUN pip install .
COPY config ./config
COPY wsgi.py ./

RUN useradd --system --uid 10001 --home-dir /app app \
    && mkdir -p /var/lib/accident-service && chown app /var/lib/accident-service
USER app

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
# Run `accident-service db upgrade` once per release (a job), then start web and scheduler containers.
CMD ["gunicorn", "--config", "config/gunicorn.conf.py", "wsgi:app"]
