# Conceptscope server image. CPU torch wheels by default (a smaller image); for NVIDIA GPUs build
# with CUDA wheels: `docker build --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t conceptscope:gpu .`
# (docker-compose's `gpu` profile does) and run with `--gpus all`.
# The same image serves (SQLite or PostgreSQL via --db / CONCEPTSCOPE_DB), runs precompute stages
# and `conceptscope db upgrade` / `db copy`; psycopg (binary) is a dependency, so no libpq is needed.
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/conceptscope
COPY pyproject.toml README.md ./
COPY app ./app
COPY precompute ./precompute
COPY templates ./templates
COPY static ./static
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1 \
    && pip install --no-cache-dir -e .
ENV CONCEPTSCOPE_DATA_DIR=/data
# run as an unprivileged user (issue 14): it owns only /data
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin conceptscope \
    && mkdir -p /data && chown conceptscope:conceptscope /data
USER conceptscope
VOLUME ["/data"]
EXPOSE 8000
CMD ["conceptscope", "demo", "--db", "/data/demo.db", "--host", "0.0.0.0", "--port", "8000"]
