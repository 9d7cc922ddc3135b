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

EXPOSE 3000
CMD ["uvicorn", "--factory", "api.main:create_app", "--host", "0.0.0.0", "--port", "3000"]
