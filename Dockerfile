# tlog server: the log on its embedded LMDB store (or PostgreSQL with --database, publishing to
# an S3 bucket with --bucket), data on a volume, run as a non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tlog ./tlog
COPY client ./client
RUN pip install '.[postgres,s3]' && useradd --system --uid 10001 --home-dir /data tlog \
    && mkdir -p /data && chown tlog:tlog /data && chmod 700 /data

USER tlog
VOLUME ["/data"]
EXPOSE 8080
# Set TLOG_ORIGIN to the log's public URL prefix without scheme (it can never change).
ENV TLOG_DATA=/data TLOG_HOST=0.0.0.0 TLOG_PORT=8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
ENTRYPOINT ["tlog"]
CMD ["serve", "--no-demo-token"]
