from __future__ import annotations

import hashlib
import json
import re

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from serves.dialects import SERVE_DIALECTS, Dialect
from serves.upstream_keys import validate_upstream_key_name


class Engine(models.TextChoices):
    VLLM = "vllm", "vLLM"
    SGLANG = "sglang", "SGLang"
    OPENAI = "openai", "OpenAI-compatible upstream"
    ANTHROPIC = "anthropic", "Anthropic API"
    HRM = "hrm", "HRM (in-worker engine)"


class DockerState(models.TextChoices):
    RUNNING = "running"
    EXITED = "exited"
    CREATED = "created"
    PAUSED = "paused"
    RESTARTING = "restarting"
    DEAD = "dead"
    REMOVING = "removing"
    MISSING = "missing"
    REMOTE = "remote", "remote (not run by Anvil)"
    UNKNOWN = "unknown"


class Health(models.TextChoices):
    OK = "ok"
    UNHEALTHY = "unhealthy"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"


class Modality(models.TextChoices):
    TEXT = "text"
    IMAGE = "image"


MODALITIES = tuple(Modality.values)  # the canonical order a serve's list is kept in


def default_modalities() -> list[str]:
    return [Modality.TEXT.value]


class Thinking(models.TextChoices):
    """How a request switches the serve into reasoning (the serving code translates to it)."""

    NONE = "", "cannot reason"
    EFFORT = "effort", "reasoning_effort (OpenAI)"
    TEMPLATE = "template", "chat_template_kwargs.enable_thinking (vLLM, SGLang)"
    NATIVE = "native", "thinking (Anthropic)"


class StreamVerify(models.TextChoices):
    """How a stream from this serve is checked before the client sees it."""

    PROFILE = "profile", "as the live profile says (strict where measured allow-with-verify, else a prefix)"
    PREFIX = "prefix", "hold a short prefix, then pass through"
    STRICT = "strict", "hold the whole answer, verify, then replay or fall back"
    OFF = "off", "pass through from the first byte"


class Runtime(models.TextChoices):
    """Who runs the serve (serves/runtimes/): one small interface, picked by this."""

    COMPOSE = "compose", "a container (docker compose)"
    PROCESS = "process", "a process Anvil starts and supervises"
    REMOTE = "remote", "an upstream Anvil only relays to"


class ModelState(models.TextChoices):
    """Where a serve's model is: the front door sends traffic only to a loaded one."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


class LoadError(models.TextChoices):
    NONE = "", "none"
    START_FAILED = "start_failed", "the runtime could not start it"
    READY_TIMEOUT = "ready_timeout", "not ready within ready_timeout"
    EXITED = "exited", "the process exited"
    OUT_OF_MEMORY = "out_of_memory", "out of memory"
    NO_ROOM = "no_room", "does not fit its GPU, even with every other model evicted"


class Preset(models.TextChoices):
    """Engine presets build a process serve's argv from named fields (serves/runtimes/presets.py)."""

    CUSTOM = "", "a command of your own"
    VLLM = "vllm", "vLLM (python -m vllm.entrypoints.openai.api_server)"
    LLAMA_CPP = "llama_cpp", "llama.cpp (llama-server, or python -m llama_cpp.server)"
    SGLANG = "sglang", "SGLang (python -m sglang.launch_server)"
    RUNINFERENCE = "runinference", "Anvil's in-worker engine (manage.py runinference)"


# The fields that say which model answers and how: a change to any of them
# means earlier measurements of this serve no longer describe it. The context
# limit here is the operator's only: a probed one (context_limit_probed) is read
# back from the engine on every sweep and must not make profiles stale.
IDENTITY_FIELDS = ("engine", "served_model", "model_source", "revision", "quantization", "extra_body", "context_limit")

# What the serve catalog (serves/catalog.py) shows of a serve's last known state. A write that
# changes one of them must bump updated_at: that is what tells the web processes' snapshot to reload.
CATALOG_STATE_FIELDS = ("state", "health", "context_limit_probed", "model_state")


class ServeQuerySet(models.QuerySet["Serve"]):
    def write_state(self, **fields: object) -> int:
        """Write last-known-state fields; bumps ``updated_at`` only on rows where the catalog sees a change.

        ``QuerySet.update`` skips ``auto_now``, so a bare update of ``state`` leaves the snapshot of
        every web process stale (routing would keep ordering by a residency that is gone). An
        unchanged sweep bumps nothing, so the snapshots do not reload for nothing.
        """
        watched = [name for name in CATALOG_STATE_FIELDS if name in fields]
        if watched:
            changed = Q()
            for name in watched:
                changed |= ~Q(**{name: fields[name]})
            self.filter(changed).update(**fields, updated_at=timezone.now())
        return self.update(**fields)  # the rest, and every row the catalog sees no change on


def validate_host_name(value: str) -> None:
    if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise ValidationError("A host name is letters, digits, '.', '_' and '-'.")


class Serve(models.Model):
    """One model server Anvil routes to: a container it runs, or an upstream it only relays to."""

    name = models.SlugField(max_length=64, unique=True)
    tier = models.SlugField(max_length=32, help_text="Cost class the router orders by, e.g. fast, heavy, cloud.")
    engine = models.CharField(max_length=16, choices=Engine.choices, default=Engine.VLLM)
    dialect = models.CharField(max_length=16, choices=SERVE_DIALECTS, default=Dialect.OPENAI.value,
                               help_text="The protocol the upstream speaks.")
    base_url = models.URLField(max_length=300, blank=True,
                               help_text="Where the API lives, e.g. http://127.0.0.1:30001/v1. "
                               "Blank for a local container: http://127.0.0.1:{port}/v1.")
    port = models.PositiveIntegerField(null=True, blank=True)
    served_model = models.CharField(max_length=200, help_text="The model id the upstream answers to (manifest: model).")
    model_source = models.CharField(max_length=300, blank=True,
                                    help_text="What the engine loads (hub id or path); blank means served_model.")
    health_path = models.CharField(max_length=200, default="/health",
                                   help_text="Probed at the server root (not under /v1).")
    container = models.CharField(max_length=128, blank=True,
                                 help_text="Docker container name; blank for an upstream Anvil does not run.")
    compose_file = models.CharField(max_length=500, blank=True)
    compose_service = models.CharField(max_length=128, blank=True)
    up_command = models.CharField(max_length=1000, blank=True,
                                  help_text="A start command that is not docker compose up: runs only when trusted.")
    trusted_command = models.BooleanField(default=False,
                                          help_text="Allow up_command to run although it is not docker compose up.")
    groups = models.JSONField(default=list, blank=True, help_text='Names to act on together, e.g. ["gpu0", "coding"].')
    gpu = models.CharField(max_length=64, blank=True, help_text="GPU UUID (preferred) or index.")
    context_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Max context tokens. Blank: what the engine reports (vLLM's max_model_len).")
    context_limit_probed = models.PositiveIntegerField(
        null=True, blank=True, editable=False, help_text="Max context tokens the engine reported at the last probe.")
    supports_tools = models.BooleanField(default=True, help_text="Whether the serve can answer tool calls.")
    modalities = models.JSONField(default=default_modalities, blank=True,
                                  help_text='What the serve takes as input: ["text"] or ["text", "image"].')
    thinking = models.CharField(max_length=16, choices=Thinking.choices, default=Thinking.NONE, blank=True,
                                help_text="Whether the serve can reason, and how a request switches it on.")
    embeddings = models.BooleanField(default=False, help_text="Whether the serve answers /v1/embeddings.")
    responses_api = models.BooleanField(default=False, help_text="Whether the serve speaks /v1/responses itself "
                                        "(vLLM does); otherwise Anvil translates.")
    stream_verify = models.CharField(max_length=16, choices=StreamVerify.choices, default=StreamVerify.PROFILE,
                                     help_text="How a stream from this serve is verified before the client sees it.")
    revision = models.CharField(max_length=100, blank=True)
    quantization = models.CharField(max_length=50, blank=True)
    extra_body = models.JSONField(default=dict, blank=True, help_text="Merged into every request body upstream.")
    engine_args = models.JSONField(default=list, blank=True, help_text="Extra engine CLI arguments (compose render).")
    api_key_env = models.CharField(max_length=100, blank=True, validators=[validate_upstream_key_name],
                                   help_text="Name of the env variable holding the upstream key (never the key): "
                                   "ANVIL_UPSTREAM_KEY_<NAME> or <NAME>_API_KEY.")
    queue = models.CharField(max_length=100, blank=True,
                             help_text="Celery queue of the worker on this serve's Docker host; blank: the default.")
    host = models.CharField(max_length=64, blank=True, validators=[validate_host_name],
                            help_text="The host agent (manage.py runhost NAME) that runs it: its lifecycle goes to "
                            "that host's queue, and a host that stops beating makes it unknown. Blank: this stack's.")

    @property
    def lifecycle_queue(self) -> str:
        """Where its loads, unloads and compose operations go: its host's queue, else ``queue``, else the default."""
        return f"host.{self.host}" if self.host else self.queue
    enabled = models.BooleanField(default=True)

    # How it is run (serves/runtimes/). A process serve's argv comes from a preset's named fields, or
    # from ``command``; {port} and {dir} are expanded. Its env holds settings, never secrets: a value
    # written ${NAME} is read from the host's environment when the process starts.
    runtime = models.CharField(max_length=16, choices=Runtime.choices, blank=True, default="",
                               help_text="Blank: compose when a container is named, else remote.")
    preset = models.CharField(max_length=16, choices=Preset.choices, default=Preset.CUSTOM, blank=True)
    preset_args = models.JSONField(default=dict, blank=True,
                                   help_text="The preset's named fields, e.g. {\"model\": \"/models/x\", "
                                   "\"max_model_len\": 4096}.")
    command = models.JSONField(default=list, blank=True, help_text="A process serve's argv, when no preset builds it.")
    env = models.JSONField(default=dict, blank=True, help_text="Environment of a process serve (${NAME}: the host's).")
    cwd = models.CharField(max_length=500, blank=True)
    library_path = models.CharField(max_length=1000, blank=True, help_text="Prepended to LD_LIBRARY_PATH.")
    ready_timeout = models.PositiveIntegerField(default=600, help_text="Seconds a load may take before it fails.")
    stop_timeout = models.PositiveIntegerField(default=30, help_text="Seconds from SIGTERM to SIGKILL.")
    drain_timeout = models.PositiveIntegerField(default=30, help_text="Seconds an unload waits for requests in flight.")
    load_constraints = models.JSONField(
        default=dict, blank=True, help_text='Overrides a load may set, and their ranges: {"max_model_len": '
        '{"min": 256, "max": 8192}, "extra_args": {"allow": ["--enforce-eager"]}}.')
    vram_gb = models.FloatField(null=True, blank=True, help_text="Declared GPU memory footprint (GB).")
    vram_measured_gb = models.FloatField(null=True, blank=True, editable=False,
                                         help_text="GPU memory that appeared while it last loaded (GB).")

    # The pool (docs/pool.md): what a model name means, and how requests wait for a serve.
    alias = models.CharField(max_length=200, blank=True,
                             help_text="The model id clients send. Serves sharing one are replicas; blank: the name.")
    fallback_to = models.JSONField(default=list, blank=True,
                                   help_text='Models that may answer a request naming this one when none of its '
                                   'replicas can, in order, e.g. ["small-chat"]. Empty: none may.')
    on_demand = models.BooleanField(default=False,
                                    help_text="A request for it while it is unloaded loads it and waits.")
    ttl = models.PositiveIntegerField(null=True, blank=True,
                                      help_text="Seconds idle since its last request before it is unloaded "
                                      "(blank: stays loaded).")
    target_inflight = models.PositiveIntegerField(null=True, blank=True,
                                                  help_text="At most this many requests at once; the rest wait "
                                                  "in its queue (blank: no limit, no queue).")
    max_queue = models.PositiveIntegerField(default=100, help_text="Requests that may wait for it; more get a 429.")
    queue_timeout = models.PositiveIntegerField(default=120,
                                                help_text="Seconds a request may wait for it (a load included).")
    # A model's bounds, read across its serves (the largest value wins): serves/replicas.py.
    replicas = models.PositiveSmallIntegerField(
        default=0, help_text="Keep at least this many of this model's serves loaded (its on-demand ones are "
        "loaded to reach it; ttl never unloads below it).")
    replica_max = models.PositiveSmallIntegerField(
        default=1, help_text="Load up to this many of this model's serves at once when its queue stays deep "
        "(its on-demand ones, where they fit without evicting another model).")

    # What a million tokens cost (USD): a remote tier's real price, a local serve's internal one (docs/keys.md).
    price_input = models.DecimalField(max_digits=12, decimal_places=6, default=0,
                                      help_text="USD per million prompt tokens (0: free).")
    price_output = models.DecimalField(max_digits=12, decimal_places=6, default=0,
                                       help_text="USD per million completion tokens (0: free).")

    # Where the model is (model state), written by loads, unloads and the process watch.
    model_state = models.CharField(max_length=16, choices=ModelState.choices, default=ModelState.UNLOADED,
                                   editable=False)  # only loads, unloads and the watch move it (serves/loading.py)
    load_error = models.CharField(max_length=16, choices=LoadError.choices, default=LoadError.NONE, blank=True)
    last_error = models.TextField(blank=True)
    live_overrides = models.JSONField(default=dict, blank=True, editable=False,
                                      help_text="The overrides of the current load (live only: the row is unchanged).")
    state_changed_at = models.DateTimeField(null=True, blank=True, editable=False)

    # Last known state, kept fresh by the status sweep.
    state = models.CharField(max_length=16, choices=DockerState.choices, default=DockerState.UNKNOWN)
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.UNKNOWN)
    reported_model = models.CharField(max_length=200, blank=True)
    gpu_memory = models.CharField(max_length=100, blank=True, default="unknown")
    state_detail = models.CharField(max_length=500, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)

    # One lifecycle operation at a time (claimed by a conditional UPDATE).
    busy_token = models.CharField(max_length=64, blank=True, editable=False)
    busy_since = models.DateTimeField(null=True, blank=True, editable=False)
    busy_action = models.CharField(max_length=16, blank=True, editable=False)

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ServeQuerySet.as_manager()

    class Meta:
        ordering = ["tier", "name"]

    def __str__(self) -> str:
        return self.name

    # --- rules about one row ----------------------------------------------
    @property
    def run_by(self) -> Runtime:
        """The runtime in effect: the row's, else compose for a named container, else remote."""
        if self.runtime:
            return Runtime(self.runtime)
        return Runtime.COMPOSE if self.container else Runtime.REMOTE

    @property
    def is_local(self) -> bool:
        """Anvil runs this serve's container (as opposed to only relaying to it, or running a process)."""
        return self.run_by == Runtime.COMPOSE

    @property
    def current_model_state(self) -> str:
        """An upstream Anvil only relays to is always loaded: loading it is not Anvil's to do."""
        return ModelState.LOADED if self.run_by == Runtime.REMOTE else self.model_state

    @property
    def is_managed(self) -> bool:
        """Anvil runs this serve, as a container or a process: it has a model state of its own."""
        return self.run_by != Runtime.REMOTE

    @property
    def uses_compose(self) -> bool:
        return bool(self.compose_file and self.compose_service)

    @property
    def effective_base_url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        if self.port:
            return f"http://127.0.0.1:{self.port}/v1"
        return ""

    @property
    def server_root(self) -> str:
        """The base URL without its API version path: where /health lives."""
        url = self.effective_base_url
        for suffix in ("/v1",):
            if url.endswith(suffix):
                return url[: -len(suffix)]
        return url

    @property
    def effective_context_limit(self) -> int | None:
        """The operator's limit when set (it may be deliberately lower than the engine's), else the probed one."""
        return self.context_limit or self.context_limit_probed

    def identity(self) -> dict[str, object]:
        return {field: getattr(self, field) for field in IDENTITY_FIELDS}

    def fingerprint(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def in_group(self, group: str) -> bool:
        return group in (self.groups or [])

    @property
    def is_queued(self) -> bool:
        """Whether requests reach it through its queue (inference/serve_queue.py): as ServeView.queued."""
        return self.target_inflight is not None or self.on_demand or self.ttl is not None

    @property
    def public_model(self) -> str:
        """The model id clients send for this serve (its replicas share it)."""
        return self.alias or self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.run_by == Runtime.REMOTE and not self.base_url:
            errors["base_url"] = ("An upstream Anvil does not run needs a base_url (or give a container and port, "
                                  "or runtime = \"process\" and a command or preset).")
        if self.container and not (self.port or self.base_url):
            errors["port"] = "A local container needs a port (or a base_url)."
        if bool(self.compose_file) != bool(self.compose_service):
            errors["compose_service"] = "compose_file and compose_service go together."
        if self.container and not self.uses_compose and not self.up_command:
            errors["compose_file"] = "A local container needs a compose file and service (or a trusted up_command)."
        if self.run_by == Runtime.COMPOSE and not self.container:
            errors["runtime"] = "A compose serve names its container."
        if self.run_by == Runtime.PROCESS:
            if not self.port:
                errors["port"] = "A process serve needs the port it listens on."
            if not self.preset and not self.command:
                errors["command"] = "A process serve needs a command (an argv list) or a preset."
        if not isinstance(self.command, list) or not all(isinstance(a, str) for a in self.command):
            errors["command"] = "command is a list of strings (an argv), never a shell line."
        if not isinstance(self.env, dict) or not all(isinstance(v, str) for v in self.env.values()):
            errors["env"] = "env maps names to strings."
        if not isinstance(self.groups, list) or not all(isinstance(g, str) for g in self.groups):
            errors["groups"] = "groups is a list of names."
        if not isinstance(self.extra_body, dict):
            errors["extra_body"] = "extra_body is a JSON object."
        if not isinstance(self.engine_args, list) or not all(isinstance(a, str) for a in self.engine_args):
            errors["engine_args"] = "engine_args is a list of strings."
        if not isinstance(self.fallback_to, list) or not all(isinstance(m, str) and m for m in self.fallback_to):
            errors["fallback_to"] = "fallback_to is a list of model names (aliases or serve names)."
        elif self.public_model in self.fallback_to:
            errors["fallback_to"] = f"fallback_to names {self.public_model!r}, this serve's own model."
        if self.ttl is not None and self.ttl < 1:
            errors["ttl"] = "ttl is at least 1 second (blank: stays loaded)."
        if self.target_inflight == 0:
            errors["target_inflight"] = "target_inflight is at least 1 (blank: no limit)."
        for price in ("price_input", "price_output"):
            if getattr(self, price) is not None and getattr(self, price) < 0:
                errors[price] = "A price is 0 or more (USD per million tokens)."
        if self.replica_max == 0:
            errors["replica_max"] = "replica_max is at least 1 (1: no extra replicas)."
        if self.on_demand and self.run_by == Runtime.REMOTE:
            errors["on_demand"] = "Only a serve Anvil runs (process or compose) can be loaded on demand."
        modalities_problem = _modalities_problem(self.modalities)
        if modalities_problem:
            errors["modalities"] = modalities_problem
        else:
            self.modalities = [m for m in MODALITIES if m in self.modalities]  # one order: equal lists compare equal
        if errors:
            raise ValidationError(errors)


def _modalities_problem(value: object) -> str | None:
    known = ", ".join(MODALITIES)
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        return f"modalities is a non-empty list of: {known}."
    unknown = sorted(set(value) - set(MODALITIES))
    if unknown:
        return f"unknown modalit{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; known: {known}."
    if len(set(value)) != len(value):
        return "modalities lists a modality twice."
    return None


class ServeEvent(models.Model):
    """What a lifecycle operation did to a serve: one row per up, down or status."""

    class Outcome(models.TextChoices):
        OK = "ok"
        FAILED = "failed"
        REFUSED = "refused", "refused (left for the operator)"
        BUSY = "busy", "skipped (another operation held the serve)"
        NOTHING = "nothing", "nothing to do"
        DRY_RUN = "dry-run"

    serve = models.ForeignKey(Serve, on_delete=models.CASCADE, related_name="events")
    action = models.CharField(max_length=16)
    requested_by = models.CharField(max_length=150)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    state_before = models.CharField(max_length=16, blank=True)
    state_after = models.CharField(max_length=16, blank=True)
    commands = models.JSONField(default=list, blank=True, help_text="The argv lists that ran, in order.")
    output_tail = models.TextField(blank=True)
    detail = models.CharField(max_length=1000, blank=True)

    class Meta:
        ordering = ["-started_at", "-pk"]
        indexes = [models.Index(fields=["serve", "-started_at"])]

    def __str__(self) -> str:
        return f"{self.action} {self.serve_id}: {self.outcome}"


class Gpu(models.Model):
    """A device (or a CPU host's budget) that serves are loaded onto: what fits, and how swaps behave on it.

    ``name`` is what a serve's ``gpu`` says (an index, a UUID, or a name such as ``cpu``). Declared in
    serves.toml as ``[[gpu]]`` (docs/pool.md: residency).
    """

    name = models.CharField(max_length=64, unique=True, help_text="What serves name in their gpu field.")
    memory_gb = models.FloatField(null=True, blank=True,
                                  help_text="Capacity in GB; blank: nvidia-smi's total for this GPU.")
    exclusive = models.BooleanField(default=False, help_text="One model at a time on it.")
    min_residency = models.PositiveIntegerField(
        default=30, help_text="Seconds a model loaded here stays before a swap may evict it while requests want it.")
    max_wait = models.PositiveIntegerField(
        default=120, help_text="Seconds a request may wait for a swap before min_residency gives way.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "GPU"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.memory_gb is not None and not self.memory_gb > 0:
            raise ValidationError({"memory_gb": "memory_gb is a positive number of GB (blank: nvidia-smi's)."})


class Host(models.Model):
    """A host agent (``manage.py runhost NAME``): a Celery worker on the GPU host that runs its serves, beating
    to Redis every ``ANVIL_HOST_HEARTBEAT`` seconds (``serves/hosts.py``). The row keeps the last beat for the
    admin and the console; the front door reads the beats from Redis."""

    name = models.CharField(max_length=64, unique=True, validators=[validate_host_name])
    gpus = models.JSONField(default=list, blank=True, help_text="What the agent reported: nvidia-smi's, else declared.")
    pid = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
