#!/bin/sh
# The demo-detectors job (docker/demo-detectors.Dockerfile): build the demo bundles unless the model
# root already holds them, then register their detectors and bundles in the cloud.
#   DEMO_MODEL_ROOT  where the bundles are built and kept (default /data/models)
#   DEMO_CLOUD_URL   cloud-api, for the bundle uploads (default http://cloud-api:8000)
# The database comes from DATABASE_URL and CLOUD_DATABASE_PASSWORD_FILE, as for cloud-api.
set -eu
model_root="${DEMO_MODEL_ROOT:-/data/models}"
cloud_url="${DEMO_CLOUD_URL:-http://cloud-api:8000}"
python -m training.demo_bundles --model-root "$model_root"
exec python -m cloud.app.seed_demo --model-root "$model_root" --cloud-url "$cloud_url"
