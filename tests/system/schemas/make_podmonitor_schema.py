"""Write podmonitor-v1.schema.json: the Prometheus Operator's PodMonitor as a JSON Schema.

The schema comes from cloudcoil-models-prometheus-operator, whose pydantic models are
generated from the operator's CRDs (the package's version is the operator's, plus one
digit). Objects are made strict as the API server's strict field validation is (an
unknown field is an error), and pydantic's "or null" alternatives dropped (the CRD has
none). Regenerate for a new operator release, in a throwaway virtualenv:

    pip install cloudcoil==0.6.0 cloudcoil-models-prometheus-operator==0.80.1.0
    python tests/system/schemas/make_podmonitor_schema.py > tests/system/schemas/podmonitor-v1.schema.json
"""

import json
import sys
from importlib.metadata import version

NULL = {"type": "null"}


def crd_like(node):
    """``node`` with every object closed to unknown fields and no null alternatives."""
    if isinstance(node, list):
        return [crd_like(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: crd_like(value) for key, value in node.items() if key != "title"}
    options = node.get("anyOf")
    if options and NULL in options:
        rest = [option for option in options if option != NULL]
        del node["anyOf"]
        node.pop("default", None)
        node = {**node, **rest[0]} if len(rest) == 1 else {**node, "anyOf": rest}
    if "properties" in node:
        node.setdefault("additionalProperties", False)
    return node


def main():
    from cloudcoil.models.prometheus_operator.v1 import PodMonitor

    package = "cloudcoil-models-prometheus-operator"
    schema = crd_like(PodMonitor.model_json_schema(by_alias=True, mode="validation"))
    operator = version(package).rsplit(".", 1)[0]
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (
            f"PodMonitor (monitoring.coreos.com/v1) of Prometheus Operator v{operator}, from "
            f"{package} {version(package)}; made by {__file__.rsplit('/', 1)[-1]}"
        ),
        **schema,
    }
    json.dump(schema, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
