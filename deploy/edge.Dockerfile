# fpnlink edge agent: front half + feature coding, streams to the cloud over gRPC.
FROM python:3.11-slim
WORKDIR /opt/fpnlink
COPY pyproject.toml README.md ./
COPY proto proto
COPY shared shared
COPY edge edge
COPY cloud cloud
COPY tools tools
RUN pip install --no-cache-dir ".[cpu]"
ENTRYPOINT ["fpnlink-edge", "run"]
