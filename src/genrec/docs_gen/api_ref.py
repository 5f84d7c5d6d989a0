"""The HTTP API page, rendered from the OpenAPI schema of the FastAPI app (``app.openapi()``), so it shows what
the server documents: every operation, parameter, request body, answer and schema."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from genrec.docs_gen.md import page, table, text

METHODS = ("get", "post", "put", "patch", "delete")


def _tiny_bundle(root: Path) -> Path:
    """A bundle of a small SASRec trained for one epoch on a generated log: the app needs one to start."""
    import pyarrow as pa

    from genrec.data import prepare
    from genrec.serve import export_bundle
    from genrec.train.config import RunConfig
    from genrec.train.trainer import Trainer

    rows = [(u, (u + t) % 12 + 1) for u in range(20) for t in range(8)]
    items = pa.table({"item": list(range(1, 13)), "title": [f"Item {i}" for i in range(1, 13)]})
    ds = prepare(pa.table({"user": [r[0] for r in rows], "item": [r[1] for r in rows]}), name="docs", items=items)
    cfg = RunConfig.model_validate({"dataset": "docs", "model": {"name": "sasrec", "dim": 8, "blocks": 1,
                                                                 "max_len": 6, "dropout": 0.0},
                                    "train": {"epochs": 1, "batch_size": 8, "warmup_steps": 1},
                                    "eval": {"n_boot": 10, "ks": [5, 10]}})
    Trainer(cfg, root / "run", dataset=ds, show_progress=False).fit()
    return export_bundle(root / "run", root / "bundle")


def openapi_schema() -> dict[str, Any]:
    """The schema ``genrec serve`` publishes at /openapi.json, from an app over a throwaway bundle."""
    from genrec.serve.app import Settings, create_app

    with tempfile.TemporaryDirectory(prefix="genrec-docs-") as tmp:
        bundle = _tiny_bundle(Path(tmp))
        return create_app(Settings(bundle=bundle, store=str(Path(tmp) / "history.sqlite")), warm_up=False).openapi()


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(schema: dict[str, Any]) -> str:
    """A JSON schema as a short type: object names link to their section below."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{name.lower()})"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " | ".join(_type(s) for s in schema[key])
    if "enum" in schema:
        return " | ".join(f"`{v!r}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']!r}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return kind + (f" ({schema['format']})" if "format" in schema else "")


def _limits(schema: dict[str, Any]) -> str:
    keys = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<",
            "minLength": "length >=", "maxLength": "length <=", "minItems": "items >=", "maxItems": "items <=",
            "pattern": "pattern"}
    found = [f"{sign} {schema[k]}" for k, sign in keys.items() if k in schema]
    for sub in schema.get("anyOf", []):
        found += [f"{sign} {sub[k]}" for k, sign in keys.items() if k in sub]
    return ", ".join(found)


def _default(schema: dict[str, Any]) -> str:
    return f"`{schema['default']!r}`" if "default" in schema else ""


def _describe(schema: dict[str, Any]) -> str:
    text = (schema.get("description") or schema.get("title") or "").replace("\n", " ")
    limits = _limits(schema)
    return f"{text} ({limits})" if limits else text


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    title = op.get("summary") or op.get("operationId", "")
    parts = [f"### `{method.upper()} {path}`\n\n{title}. {text(op.get('description', ''))}".strip()]
    params = [[f"`{p['name']}`", p["in"], _type(p.get("schema", {})), "yes" if p.get("required") else "",
               _default(p.get("schema", {})), _describe({**p.get("schema", {}), **p})]
              for p in op.get("parameters", [])]
    parts.append(table(["parameter", "in", "type", "required", "default", "description"], params))
    body = op.get("requestBody", {}).get("content", {})
    if body:
        parts.append("Request body: " + ", ".join(f"`{ct}` {_type(c.get('schema', {}))}" for ct, c in body.items()))
    answers = []
    for status, answer in op.get("responses", {}).items():
        content = answer.get("content", {}) or {"": {}}
        for ct, c in content.items():
            answers.append([f"`{status}`", f"`{ct}`" if ct else "", _type(c.get("schema", {})) if ct else "",
                            answer.get("description", "")])
    parts.append(table(["status", "content type", "body", "description"], answers))
    return "\n\n".join(p for p in parts if p)


def _schema_section(name: str, schema: dict[str, Any]) -> str:
    required = set(schema.get("required", []))
    rows = [[f"`{field}`", _type(sub), "yes" if field in required else "", _default(sub), _describe(sub)]
            for field, sub in schema.get("properties", {}).items()]
    head = f"### {name} {{#{name.lower()}}}\n\n{text(schema.get('description', ''))}".strip()
    body = table(["field", "type", "required", "default", "description"], rows) or f"Type: {_type(schema)}"
    return f"{head}\n\n{body}"


def http_reference(schema: dict[str, Any] | None = None) -> str:
    """Markdown for every operation and schema of the OpenAPI document."""
    schema = schema or openapi_schema()
    info = schema.get("info", {})
    blocks = [f"{info.get('description', '')} Generated from the OpenAPI schema (OpenAPI {schema.get('openapi')}) "
              "that `genrec serve` publishes at `/openapi.json`, with interactive docs at `/docs`. With "
              "`--api-key`, every operation except the health checks, the page and the docs needs "
              "`Authorization: Bearer KEY`.",
              table(["operation", "summary"],
                    [[f"`{m.upper()} {p}`", op.get("summary", "")] for p, ops in schema.get("paths", {}).items()
                     for m, op in ops.items() if m in METHODS]),
              "## Operations"]
    for path, ops in schema.get("paths", {}).items():
        blocks += [_operation(path, m, op) for m, op in ops.items() if m in METHODS]
    blocks.append("## Schemas")
    blocks += [_schema_section(n, s) for n, s in sorted(schema.get("components", {}).get("schemas", {}).items())]
    return page("HTTP API", *blocks)
