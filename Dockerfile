# Built from requirements.lock: the build stage installs exactly the lock (hashes checked);
# the final stage has the virtualenv and nothing to compile with.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev make \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/newsroom
COPY requirements.lock ./
RUN /opt/newsroom/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN /opt/newsroom/bin/pip install --no-deps --no-build-isolation .

FROM python:3.11-slim
# An unprivileged user that owns the only place it writes (SQLite, embedded Redis, exports);
# with PostgreSQL and an external Redis it writes nothing there.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/newsroom --create-home newsroom
COPY --from=build /opt/newsroom /opt/newsroom
ENV PATH=/opt/newsroom/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NEWSROOM_DATA_DIR=/var/lib/newsroom
WORKDIR /var/lib/newsroom
USER newsroom
EXPOSE 8000
CMD ["newsroom", "api", "--host", "0.0.0.0", "--port", "8000"]
