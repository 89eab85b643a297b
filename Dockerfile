# syntax=docker/dockerfile:1.7
# One image for the whole platform: `recsys serve {gateway,features,retrieval,ranking}` and `recsys train`.
#   make image            (docker build -t recsys:$(VERSION) .)
# Runs as a numeric non-root user and needs no writable root filesystem: HOME and TMPDIR are /tmp, which
# the chart mounts as an emptyDir; no .pyc is written at run time (compiled at build time instead).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (cached while only the code changes): install the project's requirements from
# pyproject.toml with a stub package, then the real one.
COPY pyproject.toml README.md ./
RUN mkdir -p services protos/recsys && touch services/__init__.py protos/recsys/__init__.py \
    && pip install --upgrade pip \
    && pip install '.[k8s]' \
    && pip uninstall -y recsys
COPY protos protos
COPY services services
RUN pip install --no-deps '.[k8s]' \
    && python -m compileall -q /opt/venv/lib \
    && recsys --help >/dev/null

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
LABEL org.opencontainers.image.title="recsys" \
      org.opencontainers.image.description="Two-stage recommender (multi-source retrieval + LightGBM ranking) as gRPC services" \
      org.opencontainers.image.licenses="Apache-2.0"
# libgomp1: the OpenMP runtime LightGBM's wheel links against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid ${UID} recsys \
    && useradd --system --uid ${UID} --gid ${UID} --home-dir /tmp --no-create-home --shell /usr/sbin/nologin recsys
COPY --from=build /opt/venv /opt/venv
# The bundled MovieLens latest-small (redistributable, see its README.txt) the trainer Job learns from.
COPY data/ml-latest-small /app/data/ml-latest-small
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    RECSYS_HOST=0.0.0.0 \
    RECSYS_ARTIFACTS_DIR=/artifacts
WORKDIR /app
USER ${UID}:${UID}
EXPOSE 50051 50052 50053 50054
ENTRYPOINT ["recsys"]
CMD ["--help"]
