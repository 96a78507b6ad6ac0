# vlabus image: workers, simulated robots, the recorder and the CLI.
# torch is installed first and on its own layer; TORCH_SPEC picks the build
# (the default PyPI wheel on x86_64 Linux is the CUDA build used by the `gpu` profile).
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends mosquitto-clients \
 && rm -rf /var/lib/apt/lists/*

RUN pip install "${TORCH_SPEC}"

WORKDIR /opt/vlabus
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY security ./security
COPY vlabus ./vlabus
COPY edge_agent ./edge_agent
COPY cloud_workers ./cloud_workers
COPY bench ./bench
RUN pip install . && vlabus doctor

RUN useradd --uid 10001 --create-home vlabus && mkdir -p /keys /broker /recordings \
 && chown vlabus /keys /broker /recordings
USER vlabus
ENTRYPOINT ["vlabus"]
CMD ["--help"]
