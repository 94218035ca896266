# Conceptscope server image (CPU). For GPUs, build FROM an image with CUDA and pass --device cuda.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/conceptscope
COPY pyproject.toml README.md ./
COPY app ./app
COPY precompute ./precompute
COPY templates ./templates
COPY static ./static
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 \
    && pip install --no-cache-dir -e .
ENV CONCEPTSCOPE_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000
CMD ["conceptscope", "demo", "--db", "/data/demo.db", "--host", "0.0.0.0", "--port", "8000"]
