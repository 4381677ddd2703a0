# The one image for the operator (`lattice operator`), station pods (`lattice station run`) and the Helm chart's
# JWT bootstrap hook (`lattice auth bootstrap`). Multi-stage: build a wheel with the build tools, install it into a
# slim runtime as a non-root user (uid/gid 10001, the charts' and the operator's runAsUser).
#
#   docker build -t station-lattice:dev .        (scripts/e2e-kind.sh sends only the files below as the context)
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2
COPY pyproject.toml README.md ./
COPY station_runtime ./station_runtime
COPY operator ./operator
RUN python -m build --wheel --outdir /dist

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="station-lattice" \
      org.opencontainers.image.description="Station Lattice: stations, the operator and the CLI" \
      org.opencontainers.image.licenses="Apache-2.0"
# Bytecode is compiled at install time; at run time the root filesystem is read-only.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir "$(ls /tmp/*.whl)[operator,fast]" && rm -f /tmp/*.whl \
    && groupadd --gid 10001 lattice \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin lattice
USER 10001:10001
WORKDIR /tmp
# 8080: a station's health endpoint; 8081: the operator's /healthz.
EXPOSE 8080 8081
ENTRYPOINT ["lattice"]
CMD ["--help"]
