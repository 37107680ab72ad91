"""The serves as the hot path sees them: frozen views in a snapshot, refreshed when the table changes."""

from __future__ import annotations

from dataclasses import dataclass, replace

from django.conf import settings

from anvil_site.snapshots import Snapshot
from serves import model_states
from serves.hosts import host_watch
from serves.models import Serve


@dataclass(frozen=True)
class ServeView:
    """What the front door and the router need of a serve; never a model instance across threads."""

    id: int
    name: str
    tier: str
    engine: str
    dialect: str
    base_url: str
    served_model: str
    api_key_env: str
    context_limit: int | None  # the effective limit: the operator's when set, else the engine's probed one
    supports_tools: bool
    fingerprint: str
    extra_body: dict[str, object]
    is_local: bool
    state: str
    health: str
    created: int
    # Capabilities (serves/models.py says what each value means); defaults are a plain text serve's.
    modalities: tuple[str, ...] = ("text",)
    thinking: str = ""
    embeddings: bool = False
    responses_api: bool = False
    stream_verify: str = "profile"
    # Where the model is: traffic goes only to a loaded serve (an upstream is always loaded).
    runtime: str = "remote"
    model_state: str = "loaded"
    load_error: str = ""
    state_changed_at: float = 0.0  # epoch seconds; the newer of this and the Redis mirror's wins
    # The pool: the id clients send (replicas share it), who may answer in its place, and its queue.
    public_model: str = ""
    fallback_to: tuple[str, ...] = ()
    on_demand: bool = False
    ttl: int | None = None
    target_inflight: int | None = None
    max_queue: int = 100
    queue_timeout: float = 120.0
    # USD per million tokens (prompt, completion): what a request's spend is computed from.
    price_input: float = 0.0
    price_output: float = 0.0
    host: str = ""  # its host agent ("": this stack's); a silent host makes it "unknown"

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        """USD for this usage at this serve's prices."""
        return ((prompt_tokens or 0) * self.price_input + (completion_tokens or 0) * self.price_output) / 1e6

    @property
    def takes_images(self) -> bool:
        return "image" in self.modalities

    @property
    def model(self) -> str:
        """The model id clients send and see in answers (replicas share it)."""
        return self.public_model or self.name

    @property
    def queued(self) -> bool:
        """Whether requests for it go through its queue (a limit, a load to wait for, an idle time to count)."""
        return self.target_inflight is not None or self.on_demand or self.ttl is not None

    @property
    def loaded(self) -> bool:
        return self.model_state == "loaded"

    @property
    def loaded_at(self) -> float:
        """When this serve last became loaded (epoch seconds); 0 when unknown or it is not loaded."""
        return self.state_changed_at if self.model_state == "loaded" and self.runtime != "remote" else 0.0


def _view(serve: Serve) -> ServeView:
    return ServeView(
        id=serve.pk, name=serve.name, tier=serve.tier, engine=serve.engine, dialect=serve.dialect,
        base_url=serve.effective_base_url, served_model=serve.served_model, api_key_env=serve.api_key_env,
        context_limit=serve.effective_context_limit, supports_tools=serve.supports_tools,
        fingerprint=serve.fingerprint(), extra_body=dict(serve.extra_body or {}), is_local=serve.is_local,
        state=serve.state, health=serve.health, created=int(serve.created_at.timestamp()),
        modalities=tuple(serve.modalities or ("text",)), thinking=serve.thinking, embeddings=serve.embeddings,
        responses_api=serve.responses_api, stream_verify=serve.stream_verify,
        runtime=serve.run_by.value, model_state=serve.current_model_state, load_error=serve.load_error,
        state_changed_at=serve.state_changed_at.timestamp() if serve.state_changed_at else 0.0,
        public_model=serve.public_model, fallback_to=tuple(serve.fallback_to or ()), on_demand=serve.on_demand,
        ttl=serve.ttl, target_inflight=serve.target_inflight, max_queue=serve.max_queue,
        queue_timeout=float(serve.queue_timeout), price_input=float(serve.price_input),
        price_output=float(serve.price_output), host=serve.host,
    )


def load_enabled() -> tuple[ServeView, ...]:
    return tuple(_view(serve) for serve in Serve.objects.filter(enabled=True).order_by("tier", "name"))


SERVE_CATALOG: Snapshot[tuple[ServeView, ...]] = Snapshot(
    Serve, load_enabled, lambda: settings.ANVIL_SERVE_SYNC_INTERVAL
)


async def current_serves(*, force: bool = False) -> tuple[ServeView, ...]:
    """The enabled serves with their model states as fresh as the Redis mirror has them (within a second)."""
    serves = await SERVE_CATALOG.get(force=force)
    states = model_states.mirror().current()
    if states:
        serves = tuple(_with_state(serve, states.get(serve.name)) for serve in serves)
    hosted = {serve.host for serve in serves if serve.host}
    silent = host_watch().silent(hosted) if hosted else set()
    if silent:  # its agent stopped beating: nothing drives it, and routing must not trust it (serves/hosts.py)
        serves = tuple(replace(serve, model_state="unknown", load_error="host_silent") if serve.host in silent
                       else serve for serve in serves)
    return serves


def _with_state(serve: ServeView, mirrored: model_states.MirroredState | None) -> ServeView:
    if mirrored is None or serve.runtime == "remote" or mirrored.at <= serve.state_changed_at:
        return serve
    return replace(serve, model_state=mirrored.state, load_error=mirrored.error_code, state_changed_at=mirrored.at)
