"""The metric catalog, the Grafana dashboard, the KEDA query and the README table say the same thing.

`deploy/metrics_catalog.py` is the one list; the dashboard JSON is built from panels over it and the
README carries it as a table for the people who implement the metrics. A name used anywhere in
deploy/ but missing from the catalog (or the other way round in the README) fails here.
"""

from __future__ import annotations

import json
import re
from typing import Any

import promql_parser
import pytest
import yaml
from deploy_support import DEPLOY, K8S, load_deploy_module

PROMETHEUS_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
CHILD_ATTRIBUTES = ("expr", "lhs", "rhs", "param", "args", "vector_selector")


def selected_series(node: Any) -> set[str]:
    """Metric names a parsed PromQL expression selects (walks promql_parser's AST)."""
    if isinstance(node, list | tuple):
        return set().union(set(), *(selected_series(child) for child in node))
    found = {node.name} if type(node).__name__ == "VectorSelector" and node.name else set()
    for attribute in CHILD_ATTRIBUTES:
        child = getattr(node, attribute, None)
        if child is not None:
            found |= selected_series(child)
    return found


def series_in(query: str) -> set[str]:
    """Parse `query` as Prometheus would (a syntax error raises) and return the series it reads."""
    return selected_series(promql_parser.parse(query))


def keda_queries() -> list[str]:
    docs = yaml.safe_load_all((K8S / "base" / "keda.yaml").read_text())
    return [
        t["metadata"]["query"]
        for d in docs
        if d["kind"] == "ScaledObject"
        for t in d["spec"]["triggers"]
        if t["type"] == "prometheus"
    ]


def test_promql_walker_finds_every_selector_and_rejects_bad_syntax() -> None:
    query = (
        "histogram_quantile(0.9, sum by (le) (rate(a_bucket[5m]))) / -sum(increase(b_total[1h])) or max(c)"
    )
    assert series_in(query) == {"a_bucket", "b_total", "c"}
    with pytest.raises(ValueError):
        series_in("sum(rate(a_total[5m])")


def test_catalog_names_follow_prometheus_conventions() -> None:
    catalog = load_deploy_module("metrics_catalog")
    names = [metric.name for metric in catalog.METRICS]
    assert len(names) == len(set(names))
    for metric in catalog.METRICS:
        assert PROMETHEUS_NAME.match(metric.name) and metric.name.startswith("timemark_")
        assert metric.name.endswith("_total") == (metric.type == "counter"), metric.name
        if metric.type == "histogram":
            assert metric.name.endswith("_seconds"), "histograms here measure time, in seconds"
        assert "le" not in metric.labels and "quantile" not in metric.labels


def test_dashboard_is_built_from_the_catalog() -> None:
    builder = load_deploy_module("build_dashboard")
    catalog = load_deploy_module("metrics_catalog")
    committed = (DEPLOY / "grafana" / "timemark.json").read_text()
    assert committed == builder.render(), "stale dashboard: run python deploy/build_dashboard.py"
    dashboard = json.loads(committed)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    known = set().union(*(catalog.sample_names(metric) for metric in catalog.METRICS))
    used = set().union(*(series_in(expr) for expr in exprs))
    assert used and used <= known, f"dashboard reads series the catalog does not define: {used - known}"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    covered = {name.removesuffix("_bucket") for name in used}
    required = {"timemark_queue_depth", "timemark_jobs", "timemark_chunk_duration_seconds",
                "timemark_video_frames_decoded_total", "timemark_llm_prefill_tokens_total",
                "timemark_llm_decode_tokens_total", "timemark_gpu_memory_reserved_bytes",
                "timemark_webhook_deliveries_total"}  # fmt: skip
    assert required <= covered, f"issue 8's panels missing: {required - covered}"


def test_keda_and_readme_use_exactly_catalog_names() -> None:
    catalog = load_deploy_module("metrics_catalog")
    queries = keda_queries()
    used = set().union(*(series_in(query) for query in queries))
    assert queries and used and used <= catalog.metric_names("api")
    readme = (DEPLOY / "README.md").read_text()
    table = readme.split("<!-- metrics-table:start -->")[1].split("<!-- metrics-table:end -->")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    documented = {row.split("`")[1]: [c.strip() for c in row.strip("|").split("|")] for row in rows}
    assert set(documented) == catalog.metric_names()
    for metric in catalog.METRICS:
        _, kind, labels, process, _ = documented[metric.name]
        assert (kind, labels, process) == (metric.type, ", ".join(metric.labels), metric.process), metric.name
