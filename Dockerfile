# innerloop server image.
#
# CPU (default): python:3.11-slim + torch from the PyTorch CPU wheel index, so the
# image does not carry the ~15 CUDA wheels that `pip install torch` pulls on x86_64.
#   docker build -t innerloop:cpu .
#
# GPU: start from a CUDA runtime base and take torch from a CUDA wheel index, e.g.
#   docker build -t innerloop:gpu \
#     --build-arg BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .
#   docker run --gpus all -p 8000:8000 innerloop:gpu
#
# Run: docker run -p 8000:8000 [-e INNERLOOP_API_KEY=...] innerloop:cpu
#   With INNERLOOP_API_KEY set, every path except /health needs "X-API-Key: KEY" (or
#   "Authorization: Bearer KEY"); /health stays open for health checks and load balancers.
#   Stop: `docker stop -t 40 ...` lets the server finish requests in flight (it drains for up
#   to --shutdown-grace, 30 s, on SIGTERM); docker's default 10 s cuts the drain short.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Everything is installed into a virtualenv: it works the same on python:*-slim and
# on Ubuntu-based CUDA images, where PEP 668 forbids pip installs into the system
# Python. CUDA runtime images ship without Python, so install it only when missing.
# DL3008 (pin apt versions) is ignored: versions differ per base image, apt only runs
# to add the distro's python3 to a base that lacks one, and the slim default never does.
# hadolint ignore=DL3008
RUN if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv "${VIRTUAL_ENV}" \
    && useradd --system --uid 10001 --user-group --create-home --shell /usr/sbin/nologin innerloop

# torch first and pinned, in its own layer: it is by far the largest dependency and
# changes least often, so source edits do not re-download it.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        torch==2.14.1 torchvision==0.29.1

# Only what the packages need to build; tests, data and runs stay out of the image.
WORKDIR /tmp/src
COPY pyproject.toml README.md ./
COPY innerloop/ innerloop/
COPY training/ training/
COPY server/ server/
COPY clients/ clients/
# The already-installed torch satisfies the torch==2.14.1 pin (a local version such
# as 2.14.1+cpu matches), so this resolves the remaining dependencies from PyPI only.
RUN pip install --no-cache-dir ./clients/python . \
    && rm -rf /tmp/src

WORKDIR /app
COPY checkpoints/ /app/checkpoints/

# Root owns the code and checkpoints; the server runs unprivileged and read-only on them.
# A numeric UID lets Kubernetes' runAsNonRoot verify that it is not root.
USER 10001:10001
ENV HOME=/home/innerloop

EXPOSE 8000

# innerloop serve handles SIGTERM itself: it stops taking requests, answers those in flight
# (--shutdown-grace), then stops every process (LitServe alone would leave workers running).
STOPSIGNAL SIGTERM

# python:*-slim has no curl, so probe /health with the standard library. /health is open
# even with an API key, so the probe needs no secret.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys,urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]

CMD ["innerloop", "serve", "--host", "0.0.0.0", "--port", "8000"]
