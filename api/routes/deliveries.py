"""`/v1/deliveries`: the webhook delivery log (every attempt recorded) and manual redelivery.

A delivery is one event to one URL; its id is the `webhook-id` receivers deduplicate on, so a
redelivery keeps it. Only finished deliveries (`succeeded` or `dead`) can be redelivered: a pending
one is already scheduled, and a second sender would race the first.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy import select, tuple_
from sqlalchemy.orm import selectinload

from api.deps import Principal, ReadSessionDep, SessionDep, SettingsDep, TenantDep
from api.pagination import clamp_page_size, make_page_token, read_page_token
from api.schemas import DeliveryList, DeliveryView
from api.views import delivery_view
from core import queue
from core.models import Delivery
from core.problems import Kinds, Problem

router = APIRouter(prefix="/v1/deliveries", tags=["webhooks"])


def load_delivery(
    session: SessionDep, principal: Principal, delivery_id: uuid.UUID, *, for_update: bool = False
) -> Delivery:
    statement = select(Delivery).where(Delivery.id == delivery_id, Delivery.tenant_id == principal.tenant_id)
    if for_update:
        statement = statement.with_for_update()
    delivery = session.scalar(statement.options(selectinload(Delivery.attempt_log)))
    if delivery is None:
        raise Problem(Kinds.NOT_FOUND, "no such delivery")
    return delivery


@router.get("", response_model=DeliveryList, summary="List webhook deliveries, newest first")
def list_deliveries(
    session: ReadSessionDep,
    settings: SettingsDep,
    principal: TenantDep,
    job_id: uuid.UUID | None = None,
    state: Literal["pending", "succeeded", "dead"] | None = None,
    page_size: Annotated[int | None, Query(ge=1)] = None,
    page_token: Annotated[str | None, Query(max_length=2048)] = None,
) -> DeliveryList:
    filters = {"job_id": str(job_id) if job_id else None, "state": state}
    position = read_page_token(page_token, "deliveries", filters, settings)
    size = clamp_page_size(page_size, settings)
    statement = select(Delivery).where(Delivery.tenant_id == principal.tenant_id)
    if job_id:
        statement = statement.where(Delivery.job_id == job_id)
    if state:
        statement = statement.where(Delivery.state == state)
    if position is not None:
        try:
            after = (datetime.fromisoformat(position[0]), uuid.UUID(position[1]))
        except (ValueError, IndexError, TypeError) as err:
            raise Problem(Kinds.BAD_PAGE_TOKEN) from err
        statement = statement.where(tuple_(Delivery.created_at, Delivery.id) < tuple_(*after))
    rows = session.scalars(
        statement.options(selectinload(Delivery.attempt_log))
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(size + 1)
    ).all()
    next_token = ""
    if len(rows) > size:
        rows = rows[:size]
        next_token = make_page_token(
            "deliveries", filters, [rows[-1].created_at.isoformat(), str(rows[-1].id)], settings
        )
    return DeliveryList(data=[delivery_view(d) for d in rows], next_page_token=next_token)


@router.get("/{delivery_id:uuid}", response_model=DeliveryView, summary="One delivery with its attempts")
def get_delivery(delivery_id: uuid.UUID, session: ReadSessionDep, principal: TenantDep) -> DeliveryView:
    return delivery_view(load_delivery(session, principal, delivery_id))


@router.post(
    "/{delivery_id:uuid}:redeliver", status_code=202, response_model=DeliveryView, summary="Send again"
)
def redeliver(
    delivery_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: TenantDep
) -> DeliveryView:
    delivery = load_delivery(session, principal, delivery_id, for_update=True)
    if delivery.state == "pending":
        raise Problem(Kinds.DELIVERY_NOT_REDELIVERABLE, "the delivery is still scheduled")
    delivery.state = "pending"
    delivery.next_attempt_at = datetime.now(UTC)
    delivery.delivered_at = None
    session.commit()
    # If the broker is down the delivery stays pending and due: the sweeper sends it.
    with contextlib.suppress(queue.QueueUnavailableError):
        queue.enqueue("timemark.deliver", str(delivery.id), settings=settings)
    return delivery_view(delivery)
