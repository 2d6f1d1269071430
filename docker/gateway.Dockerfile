# gateway: nginx in front of edge-api, falling back to the cloud (port 30101).
# Build from the repository root: docker build -f docker/gateway.Dockerfile .
#
# The official image renders /etc/nginx/templates/*.template into /etc/nginx/conf.d/ with envsubst at
# start, so the settings below (and compose's environment) reach nginx; a local run renders the same
# template with launcher.gateway.
FROM nginx:1.27-alpine

# The cloud fallback verifies the cloud's TLS certificate against this bundle.
RUN apk add --no-cache ca-certificates

# Defaults for `docker run`; compose sets all three.
ENV GATEWAY_PORT=30101 \
    EDGE_API_UPSTREAM=edge-api:8718 \
    CLOUD_URL=http://cloud-api:8000

# The entrypoint exports NGINX_LOCAL_RESOLVERS from /etc/resolv.conf (Docker's DNS) for the template's
# `resolver`: the cloud name is resolved per request, so the gateway starts even while it is unknown.
ENV NGINX_ENTRYPOINT_LOCAL_RESOLVERS=1

# Substitute only the gateway's placeholders, whatever else the container's environment holds.
ENV NGINX_ENVSUBST_FILTER="^(GATEWAY_PORT|EDGE_API_UPSTREAM|CLOUD_URL|NGINX_LOCAL_RESOLVERS)"

COPY nginx/gateway.conf.template /etc/nginx/templates/default.conf.template

EXPOSE 30101
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
