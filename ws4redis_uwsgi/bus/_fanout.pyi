# The C loop of bus/fanout.py (bus/_fanout.c).
from collections.abc import Callable
from typing import Any

from ..core.envelope import BusMessage

def deliver_all(listeners: tuple[Any, ...], message: BusMessage, /) -> None: ...
def register(name: str, function: Callable[..., Any], /) -> None: ...
