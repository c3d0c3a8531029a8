"""Build the Grafana dashboard JSON (`deploy/grafana/timemark.json`) from a short list of panels.

A panel is a title, a unit and PromQL queries over the names in `metrics_catalog.py`; this script lays
them out on Grafana's 24-column grid and writes a dashboard that imports into any Grafana >= 10 with a
Prometheus data source (chosen at import through the `datasource` variable). tests/deploy checks that
the committed JSON equals this script's output and that every `timemark_*` name in it is in the catalog.

    python deploy/build_dashboard.py        # rewrites deploy/grafana/timemark.json
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD_PATH = Path(__file__).resolve().parent / "grafana" / "timemark.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[5m]"


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # a Grafana unit id
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    description: str = ""


def quantiles(metric: str, by: str = "") -> tuple[tuple[str, str], ...]:
    """p50 and p95 of a histogram over the last five minutes."""
    group = f"le{', ' + by if by else ''}"
    legend_by = f" {{{{{by}}}}}" if by else ""
    return tuple(
        (
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{RATE})))",
            f"p{int(q * 100)}{legend_by}",
        )
        for q in (0.5, 0.95)
    )


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Queues and jobs",
        (
            Panel(
                "Queue depth",
                "short",
                (("max by (queue) (timemark_queue_depth)", "{{queue}} waiting"),),
                "Messages waiting in each Celery list; KEDA's Redis trigger reads the gpu list.",
            ),
            Panel(
                "Tasks in flight",
                "short",
                (("max by (queue) (timemark_queue_inflight)", "{{queue}} running"),),
                "Started, not finished; KEDA's Prometheus trigger keeps one GPU pod per running gpu task.",
            ),
            Panel("Jobs by state", "short", (("max by (state) (timemark_jobs)", "{{state}}"),)),
            Panel(
                "Task outcomes",
                "ops",
                ((f"sum by (task, outcome) (rate(timemark_tasks_total{RATE}))", "{{task}} {{outcome}}"),),
            ),
        ),
    ),
    (
        "Inference",
        (
            Panel("Chunk latency", "s", quantiles("timemark_chunk_duration_seconds", "engine")),
            Panel(
                "Frames decoded per second",
                "short",
                (
                    (f"sum(rate(timemark_video_frames_decoded_total{RATE}))", "all workers"),
                    (
                        f"sum(rate(timemark_video_frames_decoded_total{RATE})) / "
                        f"sum(rate(timemark_video_decode_seconds_total{RATE}))",
                        "per decoding second",
                    ),
                ),
            ),
            Panel(
                "Prefill tokens per second",
                "short",
                (
                    (
                        f"sum by (engine) (rate(timemark_llm_prefill_tokens_total{RATE}))",
                        "{{engine}} all workers",
                    ),
                    (
                        f"sum by (engine) (rate(timemark_llm_prefill_tokens_total{RATE})) / "
                        f"sum by (engine) (rate(timemark_llm_prefill_seconds_total{RATE}))",
                        "{{engine}} per prefill second",
                    ),
                ),
            ),
            Panel(
                "Decode tokens per second",
                "short",
                (
                    (
                        f"sum by (engine) (rate(timemark_llm_decode_tokens_total{RATE}))",
                        "{{engine}} all workers",
                    ),
                    (
                        f"sum by (engine) (rate(timemark_llm_decode_tokens_total{RATE})) / "
                        f"sum by (engine) (rate(timemark_llm_decode_seconds_total{RATE}))",
                        "{{engine}} per decode second",
                    ),
                ),
            ),
            Panel(
                "GPU memory",
                "bytes",
                (
                    (
                        "max by (pod, device) (timemark_gpu_memory_reserved_bytes)",
                        "{{pod}} {{device}} reserved",
                    ),
                    (
                        "max by (pod, device) (timemark_gpu_memory_allocated_bytes)",
                        "{{pod}} {{device}} allocated",
                    ),
                    ("max by (device) (timemark_gpu_memory_total_bytes)", "{{device}} total"),
                ),
            ),
            Panel(
                "Model load time",
                "s",
                (("max by (pod, engine) (timemark_model_load_seconds)", "{{pod}} {{engine}}"),),
                "Keep KEDA's cooldown and scale-down window above this plus the p95 chunk time.",
            ),
        ),
    ),
    (
        "API, webhooks, usage",
        (
            Panel(
                "API requests",
                "reqps",
                ((f"sum by (status) (rate(timemark_http_requests_total{RATE}))", "{{status}}"),),
            ),
            Panel("API latency", "s", quantiles("timemark_http_request_duration_seconds", "route")),
            Panel(
                "Webhook deliveries",
                "ops",
                ((f"sum by (outcome) (rate(timemark_webhook_deliveries_total{RATE}))", "{{outcome}}"),),
            ),
            Panel(
                "Usage per hour",
                "short",
                (
                    ("sum(increase(timemark_usage_video_seconds_total[1h])) / 3600", "video hours"),
                    ("sum(increase(timemark_usage_gpu_seconds_total[1h])) / 3600", "GPU hours"),
                    ("sum by (kind) (increase(timemark_usage_tokens_total[1h])) / 1e6", "M tokens {{kind}}"),
                ),
            ),
        ),
    ),
)


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + index)}
        for index, (expr, legend) in enumerate(panel.queries)
    ]
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": targets,
    }


def build() -> dict[str, Any]:
    """The whole dashboard: one collapsed-free row header per group, panels two per line."""
    panels: list[dict[str, Any]] = []
    panel_id, y = 1, 0
    for row_title, row_panels in ROWS:
        panels.append(
            {"id": panel_id, "type": "row", "title": row_title, "collapsed": False, "panels": [],
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}}
        )  # fmt: skip
        panel_id, y = panel_id + 1, y + 1
        for index, panel in enumerate(row_panels):
            panels.append(panel_json(panel, panel_id, x=12 * (index % 2), y=y + 8 * (index // 2)))
            panel_id += 1
        y += 8 * ((len(row_panels) + 1) // 2)
    return {
        "title": "timemark",
        "uid": "timemark-overview",
        "tags": ["timemark"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },  # fmt: skip
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> int:
    DASHBOARD_PATH.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD_PATH.write_text(render())
    print(f"wrote {DASHBOARD_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
