"""``Status`` error bodies shaped like kube-apiserver's (``k8s.io/apimachinery/pkg/api/errors``).

Purely computational; no I/O. Messages follow the real server's wording because clients (kubectl)
print them and some code matches on ``reason``.
"""
from __future__ import annotations


class ApiError(Exception):
    """An error answered to the client as a ``Status`` with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def _details(name: str, group: str, resource: str) -> dict:
    return {"name": name, "group": group, "kind": resource}


def not_found(resource: str, group: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{_qualified(resource, group)} "{name}" not found',
                    _details(name, group, resource))


def already_exists(resource: str, group: str, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{_qualified(resource, group)} "{name}" already exists',
                    _details(name, group, resource))


def conflict(resource: str, group: str, name: str) -> ApiError:
    message = (f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": the '
               "object has been modified; please apply your changes to the latest version and "
               "try again")
    return ApiError(409, "Conflict", message, _details(name, group, resource))


def precondition_failed(resource: str, group: str, name: str, wanted: str, stored: int) -> ApiError:
    message = (f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": '
               f"Precondition failed: ResourceVersion in precondition: {wanted}, "
               f"ResourceVersion in object meta: {stored}")
    return ApiError(409, "Conflict", message, _details(name, group, resource))


def invalid(kind: str, group: str, name: str, field: str, why: str) -> ApiError:
    message = f'{kind}.{group or "core"} "{name}" is invalid: {field}: {why}'
    details = {"name": name, "group": group, "kind": kind,
               "causes": [{"reason": "FieldValueInvalid", "message": why, "field": field}]}
    return ApiError(422, "Invalid", message, details)


def invalid_fields(kind: str, group: str, name: str, problems: list[str]) -> ApiError:
    """Several field errors at once, worded like the real server's aggregate."""
    listed = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
    message = f'{kind}.{group or "core"} "{name}" is invalid: {listed}'
    causes = [{"reason": "FieldValueInvalid", "message": p.split(": ", 1)[-1],
               "field": p.split(": ", 1)[0]} for p in problems]
    return ApiError(422, "Invalid", message,
                    {"name": name, "group": group, "kind": kind, "causes": causes})


def unknown_fields(kind: str, version: str, fields: list[str]) -> ApiError:
    """``fieldValidation=Strict`` and undeclared fields: what kubectl apply shows by default."""
    listed = ", ".join(f'unknown field "{f}"' for f in fields)
    return ApiError(400, "BadRequest", f'{kind} in version "{version}" cannot be handled as a '
                    f"{kind}: strict decoding error: {listed}")


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(method: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", "the server does not allow this method on the "
                    f"requested resource ({method})")


def unsupported_media_type() -> ApiError:
    return ApiError(415, "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    "include: application/json-patch+json, application/merge-patch+json, "
                    "application/apply-patch+yaml")


def expired(requested: int, oldest: int) -> ApiError:
    """A watch or continue from a compacted revision: what clients turn into a re-list."""
    return ApiError(410, "Expired", f"too old resource version: {requested} ({oldest})")


def path_not_found(path: str) -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource",
                    {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]}
                    if path else None)


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


def unavailable(message: str) -> ApiError:
    return ApiError(503, "ServiceUnavailable", message)
