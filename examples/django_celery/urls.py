"""The shop's two endpoints."""

from __future__ import annotations

from django.urls import path

from examples.django_celery.shop import views

urlpatterns = [
    path("orders", views.place),
    path("orders/batch", views.place_many),
]
