# syntax=docker/dockerfile:1
# The team's MLflow tracking server: PostgreSQL backend, S3-compatible artifact store, basic auth.
#   docker build -f infra/deploy/mlflow-server.Dockerfile -t registry.example.com/ml/mlflow-server:3.17.2 infra/deploy
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg2-binary>=2.9" "boto3>=1.34" \
 && useradd --create-home --uid 1000 mlflow \
 && mkdir /mlflow-auth && chown mlflow /mlflow-auth   # basic-auth user database (a volume)
USER mlflow
WORKDIR /home/mlflow
ENV MLFLOW_DISABLE_TELEMETRY=true
