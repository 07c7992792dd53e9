# smsbridge: one image for every role; the command picks the role(s).
FROM python:3.11-slim AS build
WORKDIR /src
# A venv of exactly the locked versions, each checked against its hash, then the project alone,
# built by the locked setuptools; the final stage copies the venv whole.
RUN python -m venv /opt/smsbridge
COPY requirements/runtime.lock ./requirements/
RUN /opt/smsbridge/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements/runtime.lock
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN /opt/smsbridge/bin/pip install --no-cache-dir --no-deps --no-build-isolation .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/smsbridge --create-home smsbridge
COPY --from=build /opt/smsbridge /opt/smsbridge
ENV PATH=/opt/smsbridge/bin:$PATH
USER smsbridge
WORKDIR /var/lib/smsbridge
# 8080: the receiver (webhooks, probes, metrics); 9108: probes and metrics of worker-only processes
EXPOSE 8080 9108
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
  CMD python -c "import os, urllib.request; port = os.environ.get('SMSBRIDGE_HEALTH_PORT', '8080'); urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"
ENTRYPOINT ["smsbridge"]
CMD ["run", "--config", "/etc/smsbridge/bridge.toml"]
