"""The shop's views: each order is written and notified in one Django transaction.

``POST /orders`` writes an order and notifies its confirmation inside
``transaction.atomic()``: the email is queued on Celery when the block
commits, and a request that fails inside it leaves neither order nor
notification. ``POST /orders/batch`` writes each order in a nested block (a
savepoint): one that is refused rolls back its own order and notification,
and the others are committed and sent.
"""

from __future__ import annotations

import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from examples.django_celery.notify import notifications
from examples.django_celery.shop.models import Order


def record(email: str, item: str) -> Order:
    """Write an order and notify its confirmation, both in the current transaction."""
    order = Order.objects.create(email=email, item=item)
    notifications.notify(
        "email",
        email,
        {"order": order.pk, "item": item},
        idempotency_key=f"order-{order.pk}",
    )  # on Django's connection, in its transaction: queued when it commits
    return order


@csrf_exempt
@require_POST
def place(request: HttpRequest) -> JsonResponse:
    """One order, confirmed once it commits."""
    body = json.loads(request.body)
    with transaction.atomic():
        order = record(body["email"], body["item"])
        if body.get("fail_after_notify"):
            raise RuntimeError("the request fails after notifying")  # rolled back
    return JsonResponse({"id": order.pk}, status=201)


@csrf_exempt
@require_POST
def place_many(request: HttpRequest) -> JsonResponse:
    """Many orders in one transaction, each in a savepoint of its own."""
    placed = []
    with transaction.atomic():
        for body in json.loads(request.body):
            with transaction.atomic():  # one savepoint per order
                order = record(body["email"], body["item"])
                if body["item"] == "out of stock":
                    transaction.set_rollback(True)  # the order goes, and its email with it
                    continue
            placed.append(order.pk)
    return JsonResponse({"placed": placed}, status=201)
