"""Reading a request's named parameters, with Deribit's ``-32602 Invalid params`` on a bad one.

Over WebSocket and REST POST the values arrive as JSON; over REST GET they arrive as query
strings, so a :class:`Params` built with ``query=True`` accepts ``"10"`` for an integer and
``"true"`` for a boolean, as Deribit's REST mirror does.

The ``reason`` of a refusal follows Deribit's wording where real answers show it: a required
parameter left out is ``"value required"``, a currency Deribit does not know
``"invalid currency"``. Elsewhere the reason says what the value should have been.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from optionfeed.deribit.errors import ErrorCode, RpcError, error_message

# Deribit's reasons, as its answers spell them, e.g.
# {"code":-32602,"data":{"reason":"value required","param":"currency"},"message":"Invalid params"}
VALUE_REQUIRED = "value required"
INVALID_CURRENCY = "invalid currency"


def invalid(param: str, reason: str) -> RpcError:
    return RpcError(
        ErrorCode.INVALID_PARAMS, error_message(-32602), {"reason": reason, "param": param}
    )


class Params:
    def __init__(self, raw: dict[str, Any], *, query: bool = False) -> None:
        self.raw = raw
        self.query = query

    def __contains__(self, name: str) -> bool:
        return self.raw.get(name) is not None

    def string(
        self, name: str, *, required: bool = False, choices: Collection[str] | None = None
    ) -> str | None:
        value = self.raw.get(name)
        if value is None:
            if required:
                raise invalid(name, VALUE_REQUIRED)
            return None
        if not isinstance(value, str):
            raise invalid(name, "must be a string")
        if choices is not None and value not in choices:
            raise invalid(name, f"must be one of: {', '.join(choices)}")
        return value

    def required_string(self, name: str, choices: Collection[str] | None = None) -> str:
        value = self.string(name, required=True, choices=choices)
        assert value is not None
        return value

    def currency(self, accepted: Collection[str], *, default: str | None = None) -> str:
        """The ``currency`` parameter, one of ``accepted``.

        Left out (or null), it is ``default``; a method without a default requires it.
        """
        value = self.raw.get("currency")
        if value is None:
            if default is None:
                raise invalid("currency", VALUE_REQUIRED)
            return default
        if not isinstance(value, str) or value not in accepted:
            raise invalid("currency", INVALID_CURRENCY)
        return value

    def integer(
        self,
        name: str,
        default: int | None = None,
        *,
        low: int | None = None,
        high: int | None = None,
    ) -> int | None:
        value = self.raw.get(name)
        if value is None:
            return default
        if self.query and isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise invalid(name, "must be an integer") from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(name, "must be an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            raise invalid(name, f"must be between {low} and {high}")
        return value

    def number(self, name: str, default: float | None = None) -> float | None:
        value = self.raw.get(name)
        if value is None:
            return default
        if self.query and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise invalid(name, "must be a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid(name, "must be a number")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw.get(name)
        if value is None:
            return default
        if self.query and isinstance(value, str) and value in ("true", "false"):
            return value == "true"
        if not isinstance(value, bool):
            raise invalid(name, "must be a boolean")
        return value

    def string_list(self, name: str) -> list[str]:
        value = self.raw.get(name)
        if value is None:
            raise invalid(name, VALUE_REQUIRED)
        if not isinstance(value, list):
            raise invalid(name, "value must be a list")
        if not all(isinstance(v, str) for v in value):
            raise invalid(name, "must be a list of strings")
        return value
