"""A JSON schema (draft 7) for the part of the Compose Specification our compose files use.

Written for these tests, not the official compose-spec schema (no copy of it is in this repository, and
tests never download one): it follows the specification's names and shapes for the keys it knows, and
refuses every other key of a service, a volume, a secret and the file itself (`x-` extensions apart),
so a misspelt key (`stop_grace_periods`, `secret:`) or a value of the wrong shape fails here instead of
on a deployment host. It validates the files as written, with `${...}` still in them, and as rendered.
"""

from __future__ import annotations

from typing import Any

NAME = "^[a-zA-Z0-9._-]+$"
EXTENSION = {"^x-": {}}
# Compose durations: 1h30m, 10s, 500ms, 1.5s.
DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(h|m|s|ms|us|ns))+$"}
STRINGS = {"type": "array", "items": {"type": "string"}}
SCALAR = {"type": ["string", "number", "boolean", "null"]}
LIST_OR_DICT = {
    "oneOf": [
        {"type": "object", "patternProperties": {".+": SCALAR}, "additionalProperties": False},
        {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    ]
}
COMMAND = {"oneOf": [{"type": "null"}, {"type": "string"}, STRINGS]}


def closed(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An object with exactly these keys (and `x-` extensions)."""
    return {
        "type": "object",
        "properties": properties,
        "patternProperties": EXTENSION,
        "additionalProperties": False,
        **extra,
    }


BUILD = {
    "oneOf": [
        {"type": "string"},
        closed(
            {
                "context": {"type": "string"},
                "dockerfile": {"type": "string"},
                "args": LIST_OR_DICT,
                "target": {"type": "string"},
                "labels": LIST_OR_DICT,
                "cache_from": STRINGS,
                "platforms": STRINGS,
            }
        ),
    ]
}

PORT = {
    "oneOf": [
        {"type": "integer"},
        # [host_ip:][host_port:]container_port[/protocol]
        {
            "type": "string",
            "pattern": r"^(([0-9.]+|\[[0-9a-fA-F:]+\]):)?([0-9]+(-[0-9]+)?:)?[0-9]+(-[0-9]+)?(/(tcp|udp))?$",
        },
        closed(
            {
                "target": {"type": ["integer", "string"]},
                "published": {"type": ["integer", "string"]},
                "host_ip": {"type": "string"},
                "protocol": {"type": "string"},
                "mode": {"type": "string"},
            }
        ),
    ]
}

SERVICE_VOLUME = {
    "oneOf": [
        # source:target[:ro|rw]: a named volume or a host path
        {"type": "string", "pattern": r"^[^:]+:/[^:]*(:(ro|rw))?$"},
        closed(
            {
                "type": {"enum": ["volume", "bind", "tmpfs"]},
                "source": {"type": "string"},
                "target": {"type": "string"},
                "read_only": {"type": "boolean"},
            },
            required=["type", "target"],
        ),
    ]
}

SERVICE_SECRET = {
    "oneOf": [
        {"type": "string", "pattern": NAME},
        closed(
            {
                "source": {"type": "string", "pattern": NAME},
                "target": {"type": "string"},
                "uid": {"type": "string"},
                "gid": {"type": "string"},
                "mode": {"type": ["integer", "string"]},
            },
            required=["source"],
        ),
    ]
}

HEALTHCHECK = closed(
    {
        "test": {"oneOf": [{"type": "string"}, STRINGS]},
        "interval": DURATION,
        "timeout": DURATION,
        "start_period": DURATION,
        "start_interval": DURATION,
        "retries": {"type": "integer", "minimum": 0},
        "disable": {"type": "boolean"},
    }
)

DEPENDS_ON = {
    "oneOf": [
        {**STRINGS, "uniqueItems": True},
        {
            "type": "object",
            "patternProperties": {
                NAME: closed(
                    {
                        "condition": {
                            "enum": ["service_started", "service_healthy", "service_completed_successfully"]
                        },
                        "restart": {"type": "boolean"},
                        "required": {"type": "boolean"},
                    },
                    required=["condition"],
                )
            },
            "additionalProperties": False,
        },
    ]
}

DEVICE_REQUEST = closed(
    {
        "driver": {"type": "string"},
        "count": {"oneOf": [{"type": "integer", "minimum": 1}, {"const": "all"}]},
        "device_ids": STRINGS,
        "capabilities": {**STRINGS, "minItems": 1},
        "options": LIST_OR_DICT,
    },
    required=["capabilities"],
)

RESOURCES = closed(
    {
        "cpus": {"type": ["number", "string"]},
        "memory": {"type": "string"},
        "pids": {"type": "integer"},
        "devices": {"type": "array", "items": DEVICE_REQUEST},
    }
)

DEPLOY = closed(
    {
        "replicas": {"type": "integer", "minimum": 0},
        "resources": closed({"limits": RESOURCES, "reservations": RESOURCES}),
    }
)

LOGGING = closed(
    {
        "driver": {"type": "string"},
        "options": {
            "type": "object",
            "patternProperties": {"^.+$": {"type": ["string", "number", "null"]}},
        },
    }
)

SERVICE = closed(
    {
        "build": BUILD,
        "image": {"type": "string"},
        "command": COMMAND,
        "entrypoint": COMMAND,
        "environment": LIST_OR_DICT,
        "env_file": {"oneOf": [{"type": "string"}, STRINGS]},
        "ports": {"type": "array", "items": PORT},
        "expose": {"type": "array", "items": {"type": ["string", "integer"]}},
        "volumes": {"type": "array", "items": SERVICE_VOLUME},
        "secrets": {"type": "array", "items": SERVICE_SECRET},
        "healthcheck": HEALTHCHECK,
        "depends_on": DEPENDS_ON,
        "deploy": DEPLOY,
        "logging": LOGGING,
        "profiles": {**STRINGS, "uniqueItems": True},
        "restart": {"type": "string", "pattern": r"^(no|always|unless-stopped|on-failure(:[0-9]+)?)$"},
        "init": {"type": "boolean"},
        "stop_grace_period": DURATION,
        "stop_signal": {"type": "string"},
        "user": {"type": "string"},
        "working_dir": {"type": "string"},
        "hostname": {"type": "string"},
        "labels": LIST_OR_DICT,
        "read_only": {"type": "boolean"},
        "tmpfs": {"oneOf": [{"type": "string"}, STRINGS]},
        "shm_size": {"type": ["integer", "string"]},
        "networks": {"oneOf": [STRINGS, {"type": "object"}]},
    }
)

VOLUME = {
    "oneOf": [
        {"type": "null"},
        closed(
            {
                "name": {"type": "string"},
                "driver": {"type": "string"},
                "driver_opts": {"type": "object"},
                "external": {"type": "boolean"},
                "labels": LIST_OR_DICT,
            }
        ),
    ]
}

# Exactly one source: a file, an environment variable of the compose process, or an external secret.
SECRET = closed(
    {
        "file": {"type": "string", "minLength": 1},
        "environment": {"type": "string", "minLength": 1},
        "external": {"type": "boolean"},
        "name": {"type": "string"},
    },
    oneOf=[{"required": ["file"]}, {"required": ["environment"]}, {"required": ["external"]}],
)

COMPOSE_FILE_SCHEMA: dict[str, Any] = closed(
    {
        "name": {"type": "string"},
        "services": {"type": "object", "patternProperties": {NAME: SERVICE}, "additionalProperties": False},
        "volumes": {"type": "object", "patternProperties": {NAME: VOLUME}, "additionalProperties": False},
        "secrets": {"type": "object", "patternProperties": {NAME: SECRET}, "additionalProperties": False},
        "networks": {"type": "object"},
    },
    required=["services"],
)
COMPOSE_FILE_SCHEMA["$schema"] = "http://json-schema.org/draft-07/schema#"
