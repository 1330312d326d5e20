"""The REST side: a FastAPI app over the same :class:`~.backend.CloudBackend` (engine, thread pool, metrics) as gRPC.

=========================  ============================================================================
route                      what
=========================  ============================================================================
``POST /v1/analyze``       multipart image upload (field ``image``), ``tasks=detect,segment,keypoints``
``POST /v1/frames``        body: a serialized FeatureFrame (``application/x-protobuf``); JSON Result back
``GET /v1/capabilities``   weights, models, codecs, tasks and limits (what an edge must match)
``GET /healthz``           liveness: 200 while the process serves HTTP
``GET /readyz``            readiness: 503 until the engine is loaded and warmed up
``GET /metrics``           Prometheus text from the service's own registry
``GET /docs``              Swagger UI, its assets served by the app itself (works offline)
``GET /v1/streams...``     analytics over the results store (:mod:`.analytics`; scope ``read``)
=========================  ============================================================================

Routes that send frames need scope ``ingest``, capabilities ``ingest`` or ``read`` (see :mod:`.auth`);
health, readiness, metrics and the docs are open.

Errors come back as ``{"error": {"code": GRPC_STATUS_NAME, "message": ...}}`` with the HTTP status of
:mod:`.errors`; every route goes through one error mapper (:class:`_MappedErrorsRoute`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from fpnlink.shared.errors import BadFrameError
from fpnlink.shared.wire import PB_TO_TASK, pb

from .auth import INGEST, READ, rest_dependency
from .analytics import create_analytics_router
from .bodylimit import BodyLimitMiddleware
from .errors import map_error
from .schemas import ErrorBody, ErrorResponse, ResultModel

if TYPE_CHECKING:
    from .backend import CloudBackend

TRANSPORT = "rest"
FRAME_CONTENT_TYPES = ("application/x-protobuf", "application/protobuf", "application/octet-stream")
DEFAULT_TASKS = "detect"


# --------------------------------------------------------------------------------------------- models


class ModelInfoModel(BaseModel):
    arch: str
    task: str
    backbone_fingerprint: str
    head_fingerprint: str
    categories: list[str]


class CodecInfoModel(BaseModel):
    name: str
    fingerprint: str
    lossless: bool
    phi_min: float
    phi_max: float


class CapabilitiesModel(BaseModel):
    weights: str
    trained: bool
    models: list[ModelInfoModel]
    codecs: list[CodecInfoModel]
    tasks: list[str]
    max_frame_bytes: int
    min_size: int
    max_size: int

    @classmethod
    def from_pb(cls, caps: pb.Capabilities) -> CapabilitiesModel:
        return cls(
            weights=caps.weights,
            trained=caps.trained,
            models=[ModelInfoModel(arch=m.arch, task=PB_TO_TASK[m.task], backbone_fingerprint=m.backbone_fingerprint,
                                   head_fingerprint=m.head_fingerprint, categories=list(m.categories))
                    for m in caps.models],
            codecs=[CodecInfoModel(name=c.name, fingerprint=c.fingerprint, lossless=c.lossless, phi_min=c.phi_min,
                                   phi_max=c.phi_max) for c in caps.codecs],
            tasks=[PB_TO_TASK[t] for t in caps.tasks],
            max_frame_bytes=caps.max_frame_bytes,
            min_size=caps.min_size,
            max_size=caps.max_size,
        )


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    reason: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 409, 413, 422, 500, 503)
}


# ----------------------------------------------------------------------------------------------- errors


def error_response(exc: BaseException) -> JSONResponse:
    """The app's one error mapper: fpnlink errors -> 4xx/503, anything else -> 500 (logged)."""
    mapped = map_error(exc)
    body = ErrorResponse(error=ErrorBody(code=mapped.code.name, message=mapped.message))
    headers = {}
    if mapped.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if mapped.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(mapped.retry_after_s)))  # whole seconds (RFC 9110)
    return JSONResponse(body.model_dump(), status_code=mapped.http_status, headers=headers or None)


def validation_response(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's request validation errors in the app's one error body: 422 ``INVALID_ARGUMENT`` naming each
    bad field, the shape the OpenAPI spec documents for 422."""
    problems = "; ".join(f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors())
    body = ErrorResponse(error=ErrorBody(code="INVALID_ARGUMENT", message=f"invalid request: {problems}"))
    return JSONResponse(body.model_dump(), status_code=422)


HTTP_CODE_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                   413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT"}


def http_error_response(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """An HTTP error of routing or request parsing (an unknown path, a multipart body without a boundary) in
    the app's one error body."""
    code = HTTP_CODE_NAMES.get(exc.status_code, "UNKNOWN")
    body = ErrorResponse(error=ErrorBody(code=code, message=str(exc.detail)))
    return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=exc.headers)


class _MappedErrorsRoute(APIRoute):
    """Routes whose exceptions go through :func:`error_response`; HTTP and validation errors of request parsing
    keep the app's handlers (:func:`http_error_response`, :func:`validation_response`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def mapped_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except (StarletteHTTPException, RequestValidationError):
                raise
            except Exception as exc:  # one mapper for every route; the worker lives on
                return error_response(exc)

        return mapped_handler


def parse_tasks(text: str) -> list[str]:
    """``"detect, segment"`` -> ``["detect", "segment"]``; names are checked by the engine."""
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise BadFrameError("tasks must name at least one of detect, segment, keypoints (comma-separated)")
    return tasks


def requires(service: CloudBackend, *scopes: str) -> DependsParam:
    """A route dependency: the caller's token must hold one of ``scopes`` (401/403 otherwise)."""
    return Depends(rest_dependency(service.authenticator, scopes, service.metrics.record_auth_failure))


# ------------------------------------------------------------------------------------------------- app


def create_app(service: CloudBackend) -> FastAPI:
    """The REST app over ``service``; builds nothing heavy (readiness follows the service's setup)."""
    settings = service.settings
    app = FastAPIOffline(
        title="fpnlink cloud",
        version="1",
        description="R-CNN heads over coded ResNet50-FPN features (the same engine as the gRPC FeatureLink).",
    )
    router = APIRouter(route_class=_MappedErrorsRoute)
    ingest, ingest_or_read = [requires(service, INGEST)], [requires(service, INGEST, READ)]

    @router.post("/v1/analyze", response_model=ResultModel, response_model_exclude_none=True,
                 responses=ERROR_RESPONSES, dependencies=ingest)
    async def analyze(
        image: UploadFile = File(..., description="an image file (JPEG, PNG, ...)"),
        tasks_query: str | None = Query(None, alias="tasks", description="comma-separated tasks"),
        tasks_form: str | None = Form(None, alias="tasks", description="comma-separated tasks"),
    ) -> ResultModel:
        """Run the whole detector on an uploaded image (no feature coding)."""
        tasks = parse_tasks(tasks_form or tasks_query or DEFAULT_TASKS)
        data = await image.read()
        return ResultModel.from_pb(await service.analyze_upload(data, tasks, TRANSPORT))

    @router.post("/v1/frames", response_model=ResultModel, response_model_exclude_none=True,
                 responses=ERROR_RESPONSES, dependencies=ingest,
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}}}}})
    async def frames(request: Request) -> ResultModel:
        """Decode one serialized ``fpnlink.v1.FeatureFrame`` and run the heads it asks for."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in FRAME_CONTENT_TYPES:
            raise BadFrameError(f"content-type must be application/x-protobuf (a serialized FeatureFrame), "
                                f"got {content_type or 'none'!r}")
        data = await request.body()
        outcome = await service.handle_frame(data, TRANSPORT)
        if outcome.error is not None:
            raise outcome.error
        return ResultModel.from_pb(outcome.result)

    @router.get("/v1/capabilities", response_model=CapabilitiesModel, responses=ERROR_RESPONSES,
                dependencies=ingest_or_read)
    async def capabilities() -> CapabilitiesModel:
        """What the edge must match: backbone fingerprints, codecs, input sizes, limits."""
        return CapabilitiesModel.from_pb(service.capabilities())

    @router.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """Liveness: the process answers HTTP."""
        return Health(status="ok")

    @router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz() -> JSONResponse:
        """Readiness: 200 once the engine is loaded and warmed up, 503 before and while the results store is
        unavailable (gRPC health follows the same readiness)."""
        ready, reason = service.readiness()
        return JSONResponse(Readiness(ready=ready, reason=reason).model_dump(), status_code=200 if ready else 503)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    app.include_router(router)
    app.include_router(create_analytics_router(service.recorder, route_class=_MappedErrorsRoute,
                                               dependencies=[requires(service, READ)]))
    app.add_exception_handler(RequestValidationError, validation_response)
    app.add_exception_handler(StarletteHTTPException, http_error_response)
    app.add_middleware(BodyLimitMiddleware, reject=error_response, limits={
        "/v1/frames": settings.max_frame_bytes,
        "/v1/analyze": settings.max_upload_bytes,
    })
    return app
