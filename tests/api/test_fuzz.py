"""A seeded random search for 5xx: mutated job bodies, list parameters and ids; every answer is < 500.

Not a replacement for schemathesis (issue 9), but it runs in seconds and covers value types the
hand-written table does not (huge numbers, nested junk, unicode, booleans where strings belong).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

BASE = {
    "source": "http://127.0.0.1:9/v.mp4",
    "queries": ["when does the door open?"],
    "sampling": {"fps": 2.0, "max_frames": 32},
    "strategy": "chunked",
    "metadata": {"k": "v"},
    "client_ref": "r",
    "webhook": {"url": "http://127.0.0.1:9/hook"},
}


def junk(rng: random.Random, depth: int = 0) -> Any:
    choices = [
        None,
        True,
        False,
        0,
        -1,
        2**63,
        -(2**70),
        1e308,
        -1e-308,
        0.5,
        "",
        " ",
        "x" * rng.randint(1, 3000),
        "\u202e\u0301\U0001f600",
        "s3://",
        "upload:",
        "https://",
        "../../etc/passwd",
        "%00",
        "\t\n",
    ]
    if depth < 3:
        choices += [
            [junk(rng, depth + 1) for _ in range(rng.randint(0, 4))],
            {rng.choice(["a", "fps", "url", ""]): junk(rng, depth + 1) for _ in range(rng.randint(0, 3))},
        ]
    return rng.choice(choices)


def mutate(rng: random.Random) -> Any:
    body = json.loads(json.dumps(BASE))
    for _ in range(rng.randint(1, 4)):
        target = body
        key = rng.choice(list(body))
        if isinstance(body.get(key), dict) and body[key] and rng.random() < 0.5:
            target = body[key]
            key = rng.choice(list(target))
        action = rng.random()
        if action < 0.2:
            target.pop(key, None)
        elif action < 0.3:
            target[rng.choice(["extra", "Source", "queries ", "sampling.fps"])] = junk(rng)
        else:
            target[key] = junk(rng)
    return body if rng.random() > 0.05 else junk(rng)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_job_bodies_never_5xx(api_client, tenant, seed) -> None:
    rng = random.Random(seed)
    for _ in range(60):
        body = mutate(rng)
        headers = dict(tenant.headers)
        if rng.random() < 0.3:
            headers["Idempotency-Key"] = rng.choice(["k", "x" * 300, "\u00e9".encode(), "a b", '"q"', ""])
        answer = api_client.post("/v1/jobs", json=body, headers=headers)
        assert answer.status_code < 500, (body, answer.text)
        if answer.status_code >= 400:
            assert answer.headers["content-type"].startswith("application/problem+json"), answer.text


@pytest.mark.parametrize("seed", range(2))
def test_random_list_and_lookup_parameters_never_5xx(api_client, tenant, seed) -> None:
    rng = random.Random(100 + seed)
    values = [
        "",
        "0",
        "-5",
        "1e309",
        "nan",
        "inf",
        "null",
        "true",
        "2026-13-45",
        "2026-01-01T00:00:00+99:00",
        "x" * 3000,
        "\u00e9",
        "' OR 1=1 --",
        "%",
        "[]",
        "00000000-0000-0000-0000-000000000000",
    ]
    params = [
        "state",
        "batch_id",
        "client_ref",
        "created_after",
        "created_before",
        "page_size",
        "page_token",
        "min_confidence",
        "query_index",
        "kind",
        "job_id",
    ]
    paths = [
        "/v1/jobs",
        "/v1/jobs/{v}",
        "/v1/jobs/{v}/segments",
        "/v1/deliveries",
        "/v1/deliveries/{v}",
        "/v1/uploads/{v}",
        "/v1/batches/{v}",
    ]
    for _ in range(80):
        path = rng.choice(paths).replace("{v}", rng.choice(values) or "x")
        query = {rng.choice(params): rng.choice(values) for _ in range(rng.randint(0, 3))}
        answer = api_client.get(path, params=query, headers=tenant.headers)
        assert answer.status_code < 500, (path, query, answer.text)
