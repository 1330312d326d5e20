"""One cloud process: the engine, the gRPC server and the REST app in one asyncio loop.

Lifecycle (LitServe-style: construct cheaply, set up once, report readiness)::

    CloudService(settings)           cheap: nothing loaded, nothing bound
      └─ await start()               binds gRPC + HTTP (ports reported), health NOT_SERVING, /readyz 503
           └─ setup in a thread      load weights -> CloudEngine -> warm-up
                └─ ready             health SERVING, /readyz 200, requests served
                     └─ store down      health NOT_SERVING, /readyz 503 ("results store unavailable");
                                        SERVING again once the store's writer reaches the database
      └─ await stop()                health NOT_SERVING, in-flight requests get ``grace_s``, servers close

Heavy work runs off the event loop, so that it keeps answering health checks and metrics: frames are parsed
and validated in a small parse pool, then wait in the :class:`~.batcher.Batcher`'s one bounded queue (all
streams), which hands batches of equal task set and input size to the engine pool (``workers`` threads)::

    frame bytes ─> parse pool: decode_frame, engine.prepare ─> batcher queue ─> engine pool: engine.run_batch

``run_in_background()`` runs the whole thing in a daemon thread with its own loop, for tests and the
in-process demo.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import grpc
import torch
import uvicorn
from grpc_health.v1 import health, health_pb2

from fpnlink.shared.codec import available_codecs, codec_for_checkpoint
from fpnlink.shared.errors import NotReadyError
from fpnlink.shared.model import ModelBundle, load_bundle
from fpnlink.shared.wire import pb

from .api import create_app
from .backend import FrameOutcome
from .auth import Authenticator, check_stream_owner
from .batcher import Batcher
from .engine import CloudEngine, PreparedFrame, build_codec, decode_frame, frame_digest
from .errors import status_for
from .imageio import decode_image
from .metrics import CloudMetrics
from .recorder import FrameRecorder, now_us
from .server import SERVICE_NAME, build_grpc_server, build_health_server
from .settings import CloudSettings
from .tls import ServerTLS, load_server_tls
from .tokens import load_tokens

logger = logging.getLogger(__name__)

T = TypeVar("T")
BundleLoader = Callable[[CloudSettings], ModelBundle]
UNTRAINED_BANNER = "!" * 100


def load_settings_bundle(settings: CloudSettings) -> ModelBundle:
    """The default loader: ``settings.weights`` with the settings' model config."""
    return load_bundle(settings.weights, settings.network_config())


class CloudService:
    """Engine + gRPC server + REST app, sharing one engine, one thread pool and one metrics registry.

    Args:
        settings: process settings; ``CloudSettings()`` (environment) when omitted.
        bundle_loader: builds the model bundle from the settings (runs in a worker thread at startup);
            :func:`load_settings_bundle` by default. Tests pass a prebuilt bundle this way.

    Raises:
        ConfigError: the token file or a TLS file is unreadable or malformed (read here, at construction).
    """

    def __init__(self, settings: CloudSettings | None = None, *, bundle_loader: BundleLoader | None = None) -> None:
        self.settings = settings if settings is not None else CloudSettings()
        self.metrics = CloudMetrics()
        settings = self.settings
        self.authenticator = Authenticator(load_tokens(settings.token_file) if settings.token_file else None)
        self.tls: ServerTLS | None = load_server_tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca) \
            if settings.tls_cert is not None else None
        self.recorder = FrameRecorder.from_settings(settings, self.metrics) if settings.store else None
        if self.recorder is not None:
            self.recorder.watch_readiness(self._readiness_changed)
        self.health = health.aio.HealthServicer()
        self._health_status = health_pb2.HealthCheckResponse.NOT_SERVING
        self._health_lock: asyncio.Lock | None = None
        self._health_tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self.setup_error: Exception | None = None
        self._stopping = False
        self._queued = 0
        self._loader = bundle_loader or load_settings_bundle
        self._engine: CloudEngine | None = None
        self._workers = settings.workers or 1
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._parse_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._batcher: Batcher[PreparedFrame, pb.Result] | None = None
        self._grpc_server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        self._http_server: uvicorn.Server | None = None
        self._http_task: asyncio.Task | None = None
        self._setup_task: asyncio.Task | None = None
        self._settled: asyncio.Event | None = None

    # ------------------------------------------------------------------------------------------- state

    @property
    def ready(self) -> bool:
        return self._engine is not None

    @property
    def engine(self) -> CloudEngine:
        """The engine once set up; :class:`NotReadyError` before (or when setup failed)."""
        if self._engine is None:
            if self.setup_error is not None:
                raise NotReadyError(f"setup failed: {type(self.setup_error).__name__}: {self.setup_error}")
            raise NotReadyError(f"the engine is still loading weights {self.settings.weights!r}; retry shortly")
        return self._engine

    def readiness(self) -> tuple[bool, str]:
        """``(ready, reason)`` for health endpoints; not ready while shutting down."""
        if self._stopping:
            return False, "shutting down"
        try:
            engine = self.engine
        except NotReadyError as exc:
            return False, str(exc)
        if self.recorder is not None:
            store_ready, store_reason = self.recorder.readiness()
            if not store_ready:
                return False, store_reason
        return True, f"serving weights {engine.bundle.weights!r}"

    def _readiness_changed(self) -> None:
        """Something :meth:`readiness` reads has changed (any thread): re-derive the health status on the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody asks for health any more
            loop.call_soon_threadsafe(self._schedule_health_sync)

    def _schedule_health_sync(self) -> None:
        task = asyncio.ensure_future(self._sync_health())
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def _sync_health(self) -> None:
        """Make the gRPC health status (service ``""`` and FeatureLink) and the ready gauge follow
        :meth:`readiness`, the one place readiness is decided (``/readyz`` answers from it too).

        Readiness is read under the lock, so that overlapping syncs end on the current state.
        """
        async with self._health_lock:
            if self._stopping:  # enter_graceful_shutdown holds every status NOT_SERVING
                return
            ready, reason = self.readiness()
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            self.metrics.set_ready(ready)
            if status == self._health_status:
                return
            for name in ("", SERVICE_NAME):
                await self.health.set(name, status)
            self._health_status = status
            (logger.info if ready else logger.warning)("gRPC health %s: %s",
                                                       health_pb2.HealthCheckResponse.ServingStatus.Name(status),
                                                       reason)

    # ------------------------------------------------------------------------------------------- requests

    async def handle_frame(self, data: bytes, transport: str, *, device_id: str | None = None) -> FrameOutcome:
        """Parse, validate, decode and run one serialized frame in the thread pool; never raises for a bad frame.

        ``device_id`` (mutual TLS) must own the frame's stream (``PermissionDeniedError`` otherwise); it is
        kept in the outcome so that the frame is stored with it.

        Metrics are recorded here, for success and failure alike. Before the engine is ready the frame is
        still parsed, so that its ``UNAVAILABLE`` answer carries the stream and frame ids.
        """
        received_us = now_us()
        self._queued += 1
        self.metrics.set_queue_depth(self._queued)
        try:
            outcome = await self._frame_outcome(data, device_id)
        finally:
            self._queued -= 1
            self.metrics.set_queue_depth(self._queued)
        if self.recorder is not None:
            outcome = await self.recorder.record(outcome, received_us)
        if outcome.error is not None:
            self.metrics.record_error(transport, status_for(outcome.error)[0].name)
        elif not outcome.from_store:  # a stored answer ran no stage; it counts in frames_from_store_total
            self.metrics.record_frame(transport, outcome.frame, outcome.result)
        return outcome

    async def _frame_outcome(self, data: bytes, device_id: str | None) -> FrameOutcome:
        """Parse and validate in the parse pool, then decode and run the heads in a batch (engine pool)."""
        if self._parse_executor is None or self._batcher is None:
            return FrameOutcome(None, None, NotReadyError("the service is not started"), len(data), device_id)
        ready = await asyncio.get_running_loop().run_in_executor(self._parse_executor, self._frame_job, data,
                                                                 device_id)
        if isinstance(ready, FrameOutcome):
            return ready
        frame, prepared = ready
        try:
            result = await self._batcher.submit(prepared.batch_key, prepared)
        except Exception as exc:  # every failure becomes an outcome; the transport maps it
            return FrameOutcome(frame, None, exc, len(data), device_id)
        return FrameOutcome(frame, result, None, len(data), device_id)

    def _frame_job(self, data: bytes, device_id: str | None) -> FrameOutcome | tuple[pb.FeatureFrame, PreparedFrame]:
        """Parse and validate one frame, no decoding: its outcome when it is answered already (it failed, or
        it was resent and its result is cached), else the frame ready for a batch."""
        frame = None
        try:
            frame = decode_frame(data, self.settings.max_frame_bytes)
            self._batcher.check_capacity()  # after parsing, so that the answer carries the frame's ids
            check_stream_owner(device_id, frame.stream_id)
            stored = self.recorder.lookup(frame) if self.recorder is not None else None
            if stored is not None:
                return FrameOutcome(frame, stored, None, len(data), device_id, from_store=True)
            prepared = self.engine.prepare(frame, len(data), digest=frame_digest(data))
        except Exception as exc:  # every failure becomes an outcome; the transport maps it
            return FrameOutcome(frame, None, exc, len(data), device_id)
        if isinstance(prepared, pb.Result):
            return FrameOutcome(frame, prepared, None, len(data), device_id)
        return frame, prepared

    async def analyze_upload(self, data: bytes, tasks: Sequence[str], transport: str = "rest") -> pb.Result:
        """Decode an uploaded image and run the whole detector on it; raises fpnlink errors."""
        try:
            engine = self.engine
            result = await self._run(_image_job, engine, data, list(tasks), self.settings.max_image_pixels)
        except Exception as exc:
            self.metrics.record_error(transport, status_for(exc)[0].name)
            raise
        self.metrics.record_image(transport, result)
        return result

    def capabilities(self) -> pb.Capabilities:
        return self.engine.capabilities()

    def _engine_batch(self, frames: list[PreparedFrame]) -> list[pb.Result | Exception]:
        return self.engine.run_batch(frames)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._executor is None:
            raise NotReadyError("the service is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind both servers (health NOT_SERVING), then set up the engine in the background."""
        settings = self.settings
        self._settled = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._health_lock = asyncio.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="fpnlink-engine")
        self._parse_executor = concurrent.futures.ThreadPoolExecutor(max(2, self._workers),
                                                                     thread_name_prefix="fpnlink-parse")
        self._batcher = Batcher(self._engine_batch, self._executor, workers=self._workers,
                                max_batch_size=settings.batch_size(),
                                max_delay_s=settings.max_queue_delay_ms / 1e3, max_queue=settings.max_queue,
                                deadline_s=settings.queue_deadline_s, on_batch=self.metrics.record_batch)
        self._batcher.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.metrics.set_ready(False)

        try:
            self._grpc_server, self.grpc_port = build_grpc_server(self, settings)
            await self._grpc_server.start()
            if settings.health_port is not None:
                self._health_server, self.health_port = build_health_server(self, settings)
                await self._health_server.start()
            await self._start_http(create_app(self))
        except BaseException:
            await self.stop(grace=0)
            raise
        logger.info("fpnlink cloud listening: gRPC %s:%d, HTTP %s:%d (%s, tokens %s)", settings.host, self.grpc_port,
                    settings.host, self.http_port, _tls_mode(self.tls), "on" if self.authenticator.enabled else "off")
        if not _is_loopback(settings.host) and (self.tls is None or not self.authenticator.enabled):
            logger.warning("serving on non-loopback address %s without %s: anyone who can reach the ports can "
                           "send and read; set tls_cert/tls_key (and tls_client_ca) and token_file",
                           settings.host, " or ".join(
                               n for n, on in (("TLS", self.tls), ("tokens", self.authenticator.enabled)) if not on))
        self._setup_task = asyncio.create_task(self._setup(), name="fpnlink-setup")

    async def _start_http(self, app: object) -> None:
        settings = self.settings
        sock = _bind_socket(settings.host, settings.http_port)
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(app, lifespan="off", log_config=None, log_level=settings.log_level,
                                access_log=False, timeout_graceful_shutdown=max(1, int(settings.grace_s)),
                                **(self.tls.uvicorn_options() if self.tls else {}))
        self._http_server = _EmbeddedUvicorn(config)
        self._http_task = asyncio.create_task(self._http_server.serve(sockets=[sock]), name="fpnlink-http")
        while not self._http_server.started:
            if self._http_task.done():
                self._http_task.result()
                raise RuntimeError("the HTTP server stopped during startup")
            await asyncio.sleep(0.01)

    async def _setup(self) -> None:
        try:  # in its own thread, not the engine pool, which answers frames meanwhile
            engine = await asyncio.to_thread(self._build_engine)
        except Exception as exc:  # reported through readiness; the process owner decides whether to exit
            self.setup_error = exc
            logger.error("engine setup failed: %s", exc, exc_info=exc)
        else:
            self._engine = engine
            await self._sync_health()  # SERVING, unless the store went down meanwhile
            bundle = engine.bundle
            logger.info("engine ready: weights %r (backbone %s), input %d/%d, device %s (%d workers x %d torch "
                        "threads, batches of up to %d), tasks %s, codecs %s",
                        bundle.weights, ",".join(sorted(set(bundle.backbone_fingerprints.values()))),
                        bundle.config.min_size, bundle.config.max_size, engine.device, self._workers,
                        torch.get_num_threads(), self.settings.batch_size(), engine.tasks,
                        ", ".join(f"{name} ({codec.fingerprint})" for name, codec in sorted(engine.codecs.items())))
        finally:
            self._settled.set()

    def _build_engine(self) -> CloudEngine:
        settings = self.settings
        if self.recorder is not None:
            self.recorder.open()
        bundle = self._loader(settings)
        if not bundle.trained:
            logger.warning("%s\nUNTRAINED WEIGHTS %r: every detection this server returns is meaningless "
                           "(Result.trained = false). Use --weights coco, synthetic or a checkpoint.\n%s",
                           UNTRAINED_BANNER, bundle.weights, UNTRAINED_BANNER)
        codecs = None  # every registered codec with its defaults
        if settings.codecs is not None or settings.codec_checkpoint is not None:
            # the checkpoint goes to the codec it was trained for; other weighted codecs keep their defaults
            owner = codec_for_checkpoint(settings.codec_checkpoint) if settings.codec_checkpoint else None
            codecs = {name: build_codec(name, settings.codec_checkpoint if name == owner else None, settings.device)
                      for name in settings.codecs or available_codecs()}
        engine = CloudEngine(bundle, codecs, settings.max_frame_bytes, device=settings.device,
                             cache_size=settings.cache_size)
        if settings.warmup:
            engine.warmup()
        return engine

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until setup is done; re-raises the setup error if it failed."""
        if self._settled is None:
            raise NotReadyError("the service is not started")
        await asyncio.wait_for(self._settled.wait(), timeout)
        if self.setup_error is not None:
            raise self.setup_error

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving: health NOT_SERVING, in-flight requests get ``grace`` seconds, servers close."""
        grace = self.settings.grace_s if grace is None else grace
        self._stopping = True
        await self.health.enter_graceful_shutdown()
        self.metrics.set_ready(False)
        if self._setup_task is not None and not self._setup_task.done():
            self._setup_task.cancel()
        if self._http_server is not None:
            self._http_server.should_exit = True
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._http_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
        if self._batcher is not None:
            await self._batcher.close()
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.close)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._parse_executor is not None:
            self._parse_executor.shutdown(wait=False, cancel_futures=True)
        logger.info("fpnlink cloud stopped")

    def run_in_background(self, *, wait_ready: bool = True, timeout: float = 300.0) -> BackgroundService:
        """Start the service in a daemon thread with its own event loop; returns once ports are bound.

        Args:
            wait_ready: also wait until the engine is set up (raises its setup error if it failed).
            timeout: seconds to wait for start (and readiness).
        """
        loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the caller's thread
                started.set_exception(exc)
            else:
                started.set_result(None)
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="fpnlink-cloud", daemon=True)
        thread.start()
        started.result(timeout)
        handle = BackgroundService(self, loop, thread)
        if wait_ready:
            try:
                handle.wait_ready(timeout)
            except BaseException:
                handle.stop()
                raise
        return handle


class BackgroundService:
    """A :class:`CloudService` running in its own thread; a context manager that stops it on exit."""

    def __init__(self, service: CloudService, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.service = service
        self._loop = loop
        self._thread = thread

    @property
    def grpc_port(self) -> int:
        return self.service.grpc_port

    @property
    def http_port(self) -> int:
        return self.service.http_port

    @property
    def grpc_target(self) -> str:
        """``host:port`` for ``grpc.insecure_channel``."""
        return f"{_client_host(self.service.settings.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.service.tls else "http"
        return f"{scheme}://{_client_host(self.service.settings.host)}:{self.http_port}"

    def wait_ready(self, timeout: float | None = None) -> None:
        asyncio.run_coroutine_threadsafe(self.service.wait_ready(timeout), self._loop).result()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the service and its thread (idempotent)."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.service.stop(), self._loop)
        try:
            future.result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the process owner (``cli.serve``) handles SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _image_job(engine: CloudEngine, data: bytes, tasks: list[str], max_pixels: int) -> pb.Result:
    return engine.analyze_image(decode_image(data, max_pixels), tasks)


def _bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: ephemeral), handed to uvicorn."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _tls_mode(tls: ServerTLS | None) -> str:
    if tls is None:
        return "plaintext"
    return "mutual TLS" if tls.mutual else "TLS"


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or name (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _client_host(host: str) -> str:
    """Where a local client should connect for a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
