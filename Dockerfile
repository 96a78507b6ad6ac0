# vlabus image: workers, simulated robots, the recorder and the CLI.
# The image installs the built wheel (not the source tree), so it runs exactly what
# `pip install vlabus-*.whl` gives a user; the test suite starts every compose service from
# such an install. torch is installed first and on its own layer; TORCH_SPEC picks the build
# (the default PyPI wheel on x86_64 Linux is the CUDA build used by the `gpu` profile).
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY broker_config ./broker_config
COPY schemas ./schemas
COPY security ./security
COPY vlabus ./vlabus
COPY edge_agent ./edge_agent
COPY cloud_workers ./cloud_workers
COPY bench ./bench
RUN pip wheel --no-deps --wheel-dir /dist .

FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends mosquitto-clients \
 && rm -rf /var/lib/apt/lists/*

RUN pip install "${TORCH_SPEC}"

COPY --from=wheel /dist /dist
RUN pip install /dist/vlabus-*.whl && rm -rf /dist && vlabus --version && vlabus doctor

RUN useradd --uid 10001 --create-home vlabus && mkdir -p /id /recordings \
 && chown vlabus /id /recordings
USER vlabus
WORKDIR /home/vlabus
ENTRYPOINT ["vlabus"]
CMD ["--help"]
