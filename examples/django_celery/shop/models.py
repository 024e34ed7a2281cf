"""The shop's one model."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    """An order placed."""

    email = models.CharField(max_length=254)
    item = models.CharField(max_length=200)
