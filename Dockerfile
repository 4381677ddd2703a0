# The one image for station pods and the operator: `lattice station run` / `lattice operator`.
# Multi-stage: build a wheel with the build tools, install it into a slim runtime as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2
COPY pyproject.toml README.md ./
COPY station_runtime ./station_runtime
COPY operator ./operator
RUN python -m build --wheel --outdir /dist

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir "$(ls /tmp/*.whl)[operator,fast]" && rm -f /tmp/*.whl \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin lattice
USER 10001
ENTRYPOINT ["lattice"]
CMD ["--help"]
