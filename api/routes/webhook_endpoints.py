"""`/v1/webhook-endpoints`: a tenant's standing subscriptions to job and batch events.

Besides the per-job `webhook`, a tenant may register endpoints that receive every event of the
chosen types (all when `events` is empty) for all its jobs and batches. Each endpoint has its own
`whsec_` secret, shown once in the response that created it. URLs pass the SSRF guard at creation
and again at every delivery. An endpoint that answers 410 is disabled by the sender.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import select, tuple_

from api import submission
from api.deps import Principal, ReadSessionDep, SessionDep, SettingsDep, TenantDep
from api.pagination import clamp_page_size, make_page_token, read_page_token
from api.schemas import WEBHOOK_SECRET_PATTERN, EventName, Strict
from core.models import WebhookEndpoint
from core.problems import Kinds, Problem
from core.webhooks import generate_secret

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"])
MAX_ENDPOINTS_PER_TENANT = 20


class EndpointCreate(Strict):
    url: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://\S+$")]
    events: list[EventName] = Field(default_factory=list, max_length=8, description="empty: every event")
    secret: Annotated[str, StringConstraints(pattern=WEBHOOK_SECRET_PATTERN)] | None = None


class EndpointView(BaseModel):
    object: str = "webhook_endpoint"
    id: uuid.UUID
    url: str
    events: list[str]
    enabled: bool
    secret: str | None = Field(default=None, description="only in the response that created it")
    created_at: datetime
    disabled_at: datetime | None


class EndpointList(BaseModel):
    object: str = "list"
    data: list[EndpointView]
    next_page_token: str


def _view(endpoint: WebhookEndpoint, *, with_secret: bool = False) -> EndpointView:
    return EndpointView(
        id=endpoint.id,
        url=endpoint.url,
        events=list(endpoint.events or []),
        enabled=endpoint.enabled,
        secret=endpoint.secret if with_secret else None,
        created_at=endpoint.created_at,
        disabled_at=endpoint.disabled_at,
    )


def _load(session: SessionDep, principal: Principal, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == principal.tenant_id
        )
    )
    if endpoint is None:
        raise Problem(Kinds.NOT_FOUND, "no such webhook endpoint")
    return endpoint


@router.post("", status_code=201, response_model=EndpointView, summary="Subscribe a URL to events")
def create_endpoint(
    body: EndpointCreate, response: Response, session: SessionDep, settings: SettingsDep, principal: TenantDep
) -> EndpointView:
    submission.check_outbound_url(body.url, settings, "url")
    existing = session.scalars(
        select(WebhookEndpoint.id)
        .where(WebhookEndpoint.tenant_id == principal.tenant_id)
        .limit(MAX_ENDPOINTS_PER_TENANT)
    ).all()
    if len(existing) >= MAX_ENDPOINTS_PER_TENANT:
        raise Problem(Kinds.VALIDATION, f"at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints per tenant")
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        tenant_id=principal.tenant_id,
        url=body.url,
        secret=body.secret or generate_secret(),
        events=sorted(set(body.events)),
    )
    session.add(endpoint)
    session.commit()
    response.headers["Location"] = f"/v1/webhook-endpoints/{endpoint.id}"
    return _view(endpoint, with_secret=True)


@router.get("", response_model=EndpointList, summary="List webhook endpoints")
def list_endpoints(
    session: ReadSessionDep,
    settings: SettingsDep,
    principal: TenantDep,
    page_size: Annotated[int | None, Query(ge=1)] = None,
    page_token: Annotated[str | None, Query(max_length=2048)] = None,
) -> EndpointList:
    position = read_page_token(page_token, "webhook-endpoints", {}, settings)
    size = clamp_page_size(page_size, settings)
    statement = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == principal.tenant_id)
    if position is not None:
        try:
            after = (datetime.fromisoformat(position[0]), uuid.UUID(position[1]))
        except (ValueError, IndexError, TypeError) as err:
            raise Problem(Kinds.BAD_PAGE_TOKEN) from err
        statement = statement.where(tuple_(WebhookEndpoint.created_at, WebhookEndpoint.id) > tuple_(*after))
    rows = session.scalars(
        statement.order_by(WebhookEndpoint.created_at, WebhookEndpoint.id).limit(size + 1)
    ).all()
    token = ""
    if len(rows) > size:
        rows = rows[:size]
        token = make_page_token(
            "webhook-endpoints", {}, [rows[-1].created_at.isoformat(), str(rows[-1].id)], settings
        )
    return EndpointList(data=[_view(e) for e in rows], next_page_token=token)


@router.get("/{endpoint_id:uuid}", response_model=EndpointView, summary="One webhook endpoint")
def get_endpoint(endpoint_id: uuid.UUID, session: ReadSessionDep, principal: TenantDep) -> EndpointView:
    return _view(_load(session, principal, endpoint_id))


@router.delete("/{endpoint_id:uuid}", status_code=204, summary="Unsubscribe")
def delete_endpoint(endpoint_id: uuid.UUID, session: SessionDep, principal: TenantDep) -> Response:
    session.delete(_load(session, principal, endpoint_id))
    session.commit()  # its past deliveries stay in the log (endpoint_id becomes NULL)
    return Response(status_code=204)
