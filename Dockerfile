# streamrec: the consumer service and the producer in one image (docker-compose.yml runs both).
# The commands are the README's: `pip install .`, then `streamrec serve` / `streamrec produce ...`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package needs: the code and its metadata (.dockerignore keeps the rest out).
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY model ./model
COPY producer ./producer
COPY consumer ./consumer
COPY streamrec ./streamrec
RUN pip install .

# Checkpoints live in a volume; the service runs as an unprivileged user that owns it.
RUN useradd --create-home --uid 10001 streamrec && mkdir -p /data && chown streamrec /data
# The numba kernels (the model's, the record reader's) are compiled once, here, into a cache the service user owns:
# without it every container start would compile them again (8-20 s on 2 cores).
ENV NUMBA_CACHE_DIR=/var/cache/streamrec/numba
RUN mkdir -p "$NUMBA_CACHE_DIR" && chown streamrec "$NUMBA_CACHE_DIR"
USER streamrec
# -P: the installed copy the service imports, not /app/model (the working directory would come
# first on the path, and numba keys its cache by the source file's folder).
RUN python -P -c "import model.compiled as kernels, consumer.records as records; kernels.warm_up(); records.warm_up()"
VOLUME ["/data"]

# /metrics for Prometheus.
EXPOSE 8000
CMD ["streamrec", "serve"]
