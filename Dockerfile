# One image for the API and the dataflow; docker-compose.yml picks the command.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY meterflow ./meterflow
COPY operators ./operators
COPY flows ./flows
COPY api ./api
RUN pip install --no-cache-dir .

# In a container, loopback is the container's own: listen on every address
# (the API, and the dataflow's /metrics on 19464). So the API needs
# ADMIN_TOKEN here: without one it refuses to start (api/serve.py).
ENV API_HOST=0.0.0.0 FLOW_METRICS_HOST=0.0.0.0
EXPOSE 3000 19464
# uvicorn with API_WORKERS processes, /metrics summed over them (api/serve.py)
CMD ["python", "-m", "api.serve"]
