# fpnlink cloud: gRPC (50051) + REST/metrics (8080) in one process, on a CUDA host.
FROM python:3.11-slim
WORKDIR /opt/fpnlink
COPY pyproject.toml README.md ./
COPY proto proto
COPY shared shared
COPY edge edge
COPY cloud cloud
COPY tools tools
RUN pip install --no-cache-dir ".[gpu]"
ENV FPNLINK_CLOUD_HOST=0.0.0.0 \
    FPNLINK_CLOUD_GRPC_PORT=50051 \
    FPNLINK_CLOUD_HTTP_PORT=8080
EXPOSE 50051 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz').status != 200)"
ENTRYPOINT ["fpnlink-cloud", "serve"]
