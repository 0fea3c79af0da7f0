# shiftstream image for docker compose: the worker and the replayer run from it.
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SHIFTSTREAM_CACHE=/data/cache

# CPU wheels of torch keep the image small; use a CUDA base image and wheel for GPU workers.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.3"

COPY pyproject.toml README.md ./
COPY replay ./replay
COPY stream ./stream
COPY models ./models
RUN pip install .

VOLUME ["/data"]
