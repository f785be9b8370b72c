"""The table of the durable outbox (:mod:`ws4redis_uwsgi.bus.durable`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import models


class OutboxMessage(models.Model):
    """A message published with ``durable=True``: written in the publishing transaction, deleted once published.

    A row still here after ``WS4REDIS_OUTBOX_GRACE`` seconds was left by a
    process that died between its commit and its publish (or could not reach
    Redis): the websocket workers' drain or ``manage.py ws4redis
    drain-outbox`` publishes it, under the same ``uid``, so a client that has
    it already drops the copy.
    """

    #: Carried by every copy of the message on the bus (:func:`~ws4redis_uwsgi.core.envelope.new_durable_uid`).
    uid: models.CharField[str, str] = models.CharField(max_length=32, unique=True)
    #: When the publishing process wrote it (its clock): the drain leaves younger rows to that process.
    created: models.DateTimeField[datetime, datetime] = models.DateTimeField(db_index=True)
    facility: models.CharField[str, str] = models.CharField(max_length=255)
    #: ``{"broadcast": bool, "users": [...], "groups": [...], "sessions": [...]}``, ``SELF`` resolved.
    audiences: models.JSONField[Any, Any] = models.JSONField()
    message: models.BinaryField[bytes, bytes | memoryview] = models.BinaryField()
    binary: models.BooleanField[bool, bool] = models.BooleanField(default=False)
    #: Seconds the message stays persisted on its channels (``WS4REDIS_EXPIRE`` when it was published).
    expire: models.PositiveIntegerField[int, int] = models.PositiveIntegerField()

    class Meta:
        db_table = "ws4redis_outbox"
        verbose_name = "outbox message"

    def __str__(self) -> str:
        return f"outbox message {self.uid} on {self.facility}"
