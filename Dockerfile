# tinygpt's OpenAI-compatible server and chat page, on the CPU: the README's "Serve" steps
# (install, then `tinygpt serve`) in an image.
#
#   docker build -t tinygpt-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/plays:/model:ro" tinygpt-serve
#
# The model folder (a run folder) is mounted at /model, or copied in by an image built on
# this one (README). Give the container TINYGPT_API_KEY to require a key: it listens on all
# of its interfaces. An ONNX export folder needs onnxruntime: --build-arg EXTRAS=serve,onnx.
FROM python:3.12-slim

# torch's CPU build: the default torch wheels on PyPI are CUDA builds of several GB.
# Another build: --build-arg TORCH_SPEC="torch==2.13.0" (any torch>=2.6 works).
ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
ARG EXTRAS="serve"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin tinygpt

WORKDIR /opt/tinygpt
COPY pyproject.toml README.md ./
COPY src ./src
# TORCH_SPEC is left unquoted: it holds a requirement and pip's options. The package comes
# from its source here; its dependencies' ranges are in pyproject.toml (hence DL3013).
# hadolint ignore=SC2086,DL3013
RUN pip install --no-cache-dir ${TORCH_SPEC} \
    && pip install --no-cache-dir ".[${EXTRAS}]"

# the user made above, by number (the host's user names do not matter)
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["tinygpt", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["/model"]
