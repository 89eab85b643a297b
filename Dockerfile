# One image for the whole platform: `recsys serve {gateway,features,retrieval,ranking}` and `recsys train`.
#   make image            (docker build -t recsys:$(VERSION) .)
# Runs as a numeric non-root user and needs no writable root filesystem: HOME and TMPDIR are /tmp, which
# the chart mounts as an emptyDir; no .pyc is written at run time (compiled at build time instead).
# No `# syntax=` line: BuildKit would fetch its frontend image from a registry; the built-in frontend
# and the legacy builder both build this file.
#
# PYTHON_IMAGE: any Debian bookworm image with python3 (3.11) and its venv module, e.g. the official
# python:3.11-slim-bookworm, or one made offline with debootstrap (see `make base-image`).
# EXTRA_CA_CERTS: PEM text of extra CA certificates pip must trust (a corporate proxy), e.g.
#   --build-arg EXTRA_CA_CERTS="$(cat /usr/local/share/ca-certificates/*.crt)"
# used by the build stage only: the published (runtime) stage never sees it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRA_CA_CERTS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# pip trusts the system bundle plus the extra certificates (certifi's own bundle would not have them).
RUN if [ -n "$EXTRA_CA_CERTS" ]; then \
        cat /etc/ssl/certs/ca-certificates.crt > /tmp/ca-bundle.crt \
        && printf '%s\n' "$EXTRA_CA_CERTS" >> /tmp/ca-bundle.crt; \
    else cp /etc/ssl/certs/ca-certificates.crt /tmp/ca-bundle.crt; fi
ENV PIP_CERT=/tmp/ca-bundle.crt
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (cached while only the code changes): install the project's requirements from
# pyproject.toml with a stub package, then the real one.
COPY pyproject.toml README.md ./
RUN mkdir -p services protos/recsys && touch services/__init__.py protos/recsys/__init__.py \
    && pip install --upgrade pip \
    && pip install . \
    && pip uninstall -y recsys
COPY protos protos
COPY services services
# Not in the image: pip itself, and the `k8s` extra (`recsys k8s smoke` runs from a workstation).
RUN pip install --no-deps . \
    && recsys --help >/dev/null \
    && pip uninstall -y -q pip \
    && python -m compileall -q /opt/venv/lib

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
    && useradd --system --uid ${UID} --gid ${UID} --home-dir /tmp --no-create-home --shell /usr/sbin/nologin recsys \
    && mkdir -p /artifacts /var/lib/recsys \
    && chown ${UID}:${UID} /artifacts /var/lib/recsys
# /artifacts and /var/lib/recsys: owned by the user, so that a fresh volume mounted there (Compose named
# volumes copy the image's ownership) is writable; on Kubernetes the chart's fsGroup does the same.
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
