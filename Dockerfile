# One image for every container of the simulated lab (compose.yaml): the broker and each
# service run the same `labctl` install with a different command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the distribution is built from (there is no .dockerignore: no .git, no caches).
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY sdk ./sdk
COPY broker ./broker
COPY services ./services
COPY cli ./cli
RUN pip install . && rm -rf /src

# Run unprivileged. /state is created here, owned by that user, so a fresh named volume
# mounted on it starts with the same owner and the broker can write its SQLite files.
RUN useradd --system --create-home --uid 10001 labctl \
    && mkdir /state && chown labctl /state
USER labctl
WORKDIR /home/labctl

CMD ["labctl", "--help"]
