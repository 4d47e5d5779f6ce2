# trio-gateway: the gateway (`serve`, the default) and the engine worker (`worker ...`).
#
#   docker build -t trio-gateway .
#   docker run --rm -p 8000:8000 trio-gateway                     # gateway, mock engine
#   docker run --rm trio-gateway worker --host 0.0.0.0            # a worker (HEALTHCHECK
#                                                                 #  below is the gateway's)
#
# Give `docker stop` more than --drain-timeout-s (30 s): `docker stop -t 45`; its default of
# 10 s would SIGKILL a drain in progress.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Only what the build needs (pyproject.toml names README.md as the readme); every
# dependency is pinned by the lock file.
COPY pyproject.toml README.md requirements.lock ./
COPY trio_gateway ./trio_gateway
RUN pip install --no-cache-dir -c requirements.lock . \
    && cd / && rm -rf /src

# A numeric, non-root user: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin gateway
USER 10001:10001
WORKDIR /

EXPOSE 8000
# /live stays 200 while draining (only /ready turns 503), so a drain never looks unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/live', timeout=2)"]

# Exec form: trio-gateway is PID 1 and gets SIGTERM itself (it handles SIGTERM and SIGINT).
ENTRYPOINT ["trio-gateway"]
CMD ["serve", "--host", "0.0.0.0"]
