"""YAML loading for operator files: safe, and MACs like 52:54:00:00:00:01 stay strings."""

from __future__ import annotations

import re
from typing import Any

import yaml


class OperatorLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 base-60 numbers (which turn MACs into integers)."""


# Rebuild the implicit resolvers without the sexagesimal int/float forms.
OperatorLoader.yaml_implicit_resolvers = {
    k: [
        (tag, rx)
        for tag, rx in v
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
OperatorLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
OperatorLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def safe_load(text: str | bytes) -> Any:
    """Parse YAML (or JSON, a subset) the way operators expect."""
    return yaml.load(text, Loader=OperatorLoader)
