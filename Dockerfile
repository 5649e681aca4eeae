# h2s-search image for the study creator, the workers and the dashboard (see docker-compose.yml).
# The default torch wheel on Linux x86-64 bundles CUDA, so the same image serves GPU workers.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 H2S_HOME=/h2s-home
WORKDIR /app
COPY pyproject.toml README.md ./
COPY how2sign ./how2sign
COPY search ./search
COPY studies ./studies
RUN pip install --upgrade pip && pip install '.[postgres,mysql]'
WORKDIR /work
ENTRYPOINT ["h2s-search"]
CMD ["--help"]
