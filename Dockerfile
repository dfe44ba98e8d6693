# control-service: the control plane sidecar beside an inference engine.
# Build: docker build -t control-service .
#        docker build --build-arg EXTRAS=otel -t control-service:otel .   (with tracing: README)
# Run:   docker run -e CONTROL_SERVICE_ENGINE=engine=tcp://engine:5555 -p 50051:50051 control-service

FROM python:3.11-slim AS build
# Extras beside `fast`, comma-separated: "otel" adds OpenTelemetry tracing. Empty: a small image.
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY protos ./protos
COPY scripts ./scripts
COPY control_service ./control_service
COPY engine_stub ./engine_stub
# Regenerate the protobuf code in the image (it must match what is committed) and build the
# wheels at the versions the tests ran (constraints.txt, the lock).
RUN pip install --no-cache-dir "grpcio-tools==1.85.1" \
 && python scripts/gen_protos.py /tmp/gen \
 && diff -r /tmp/gen/control_service/gen control_service/gen \
 && pip wheel --no-cache-dir -c constraints.txt --wheel-dir /wheels ".[fast${EXTRAS:+,$EXTRAS}]"

FROM python:3.11-slim
ARG EXTRAS=""
RUN useradd --create-home --uid 10001 control
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels \
    "control-service[fast${EXTRAS:+,$EXTRAS}]==0.1.0" \
 && rm -rf /wheels
USER 10001
ENV CONTROL_SERVICE_LISTEN=0.0.0.0:50051 \
    CONTROL_SERVICE_METRICS_PORT=9090 \
    CONTROL_SERVICE_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 50051 9090
# The check reads the service's own env (listen port, token); with TLS on the gRPC port, also set
# CONTROL_SERVICE_HEALTH_TLS_CA (+ _CERT/_KEY for mutual TLS, _SERVER_NAME if the cert needs it).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-m", "control_service.cli.healthcheck"]
# Exec form: SIGTERM reaches the server, which drains calls and exits 0.
ENTRYPOINT ["control-service", "serve"]
