"""Anvil's one settings module: every value comes from the environment.

The defaults are the embedded stack of ``make run``: SQLite and a secret key
under ``var/``, and an embedded Redis (started by the launcher) on a unix socket
there. Production sets ``DATABASE_URL``, ``REDIS_URL``, ``DJANGO_SECRET_KEY``,
``ANVIL_BIND`` and ``ALLOWED_HOSTS``; the code is the same. Malformed values are
reported by the system checks in ``anvil_site/checks.py``.
"""

from __future__ import annotations

from pathlib import Path

from anvil_site import environment as env

BASE_DIR = Path(__file__).resolve().parent.parent

# --- where Anvil keeps its own files -------------------------------------
VAR_DIR = env.var_dir("ANVIL_VAR_DIR", BASE_DIR / "var")

SECRET_KEY = env.secret_key("DJANGO_SECRET_KEY", VAR_DIR / "secret_key")
DEBUG = env.env_bool("DEBUG", False)

ANVIL_BIND = env.bind_address("ANVIL_BIND", "127.0.0.1:8000")
_default_hosts = ["localhost", "127.0.0.1", "[::1]"]
if ANVIL_BIND.host not in ("0.0.0.0", "::", *_default_hosts):
    _default_hosts.append(ANVIL_BIND.host)
ALLOWED_HOSTS = env.env_list("ALLOWED_HOSTS", _default_hosts)
CSRF_TRUSTED_ORIGINS = env.env_list("CSRF_TRUSTED_ORIGINS", [])

# --- the database -----------------------------------------------------------
DATABASE_URL_DEFAULT = f"sqlite:///{VAR_DIR / 'anvil.sqlite3'}"
DATABASES = {"default": env.database_from_url("DATABASE_URL", DATABASE_URL_DEFAULT)}
DATABASE_URL_IS_SET = env.env_str("DATABASE_URL", "") != ""
if DATABASES["default"].get("ENGINE", "").endswith("sqlite3"):
    # pytest-django's test database must be a file, not ":memory:", so that the
    # real worker processes the tests start can see it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-anvil.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: Celery broker, results, channel layer, shared routing state ---
# Unset means the embedded Redis the launcher starts on a unix socket.
EMBEDDED_REDIS_SOCKET = VAR_DIR / "redis.sock"
REDIS_URL_IS_EMBEDDED = env.env_str("REDIS_URL", "") == ""
REDIS_URL = env.redis_url("REDIS_URL", f"unix://{EMBEDDED_REDIS_SOCKET}")
ANVIL_REDIS_PREFIX = env.env_str("ANVIL_REDIS_PREFIX", "anvil")
# Network calls to Redis never wait forever.
ANVIL_REDIS_TIMEOUT = env.env_float("ANVIL_REDIS_TIMEOUT", 2.0, minimum=0.05)
# Celery worker processes `runstack` starts.
ANVIL_WORKER_CONCURRENCY = env.env_int("ANVIL_WORKER_CONCURRENCY", 2, minimum=1)

# --- the in-worker engine `runstack` starts (inference/hrm) -----------------
# The checkpoint it serves; "off" starts none. The demo model is committed under models/.
_HRM_CHECKPOINT = env.env_str("ANVIL_HRM_CHECKPOINT", str(BASE_DIR / "models" / "hrm-demo"))
ANVIL_HRM_CHECKPOINT = None if _HRM_CHECKPOINT.lower() in ("", "off", "none") else Path(_HRM_CHECKPOINT)
# The inference worker's torch device and intra-op threads (0: torch's own default).
ANVIL_DEVICE = env.env_device("ANVIL_DEVICE", "cpu")
ANVIL_TORCH_THREADS = env.env_int("ANVIL_TORCH_THREADS", 0, minimum=0)
# The superuser the launcher creates when there is none; a chosen password must pass the validators.
ANVIL_ADMIN_USER = env.env_str("ANVIL_ADMIN_USER", "admin")
ANVIL_ADMIN_PASSWORD = env.env_str("ANVIL_ADMIN_PASSWORD", "")
ANVIL_HRM_PORT = env.env_int("ANVIL_HRM_PORT", 8010, minimum=1)
# make run's swap demo: the same checkpoint as a second on-demand serve sharing the demo device (docs/pool.md)
ANVIL_HRM_SWAP_PORT = env.env_int("ANVIL_HRM_SWAP_PORT", ANVIL_HRM_PORT + 1, minimum=1)
ANVIL_HRM_SERVE = env.env_str("ANVIL_HRM_SERVE", "hrm-demo")  # the serve it is registered as
ANVIL_HRM_TIER = env.env_str("ANVIL_HRM_TIER", "fast")  # only when the serve is first created

# --- applications -----------------------------------------------------------
INSTALLED_APPS = [
    "daphne",
    "anvil_site.admin_app.AnvilAdminConfig",  # django.contrib.admin, with a throttled sign-in form
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "django_celery_beat",
    "anvil_site",
    "serves",
    "routing",
    "inference",
    "evals",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "anvil_site.urls"
ASGI_APPLICATION = "anvil_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Also applied to ANVIL_ADMIN_PASSWORD before the launcher creates the admin (anvil_site/admin_account.py).
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/admin/login/"
# Sign-in throttling (anvil_site/login_throttle.py): this many failures within the window lock
# that username, or that client address, until the window has passed; a success resets the username.
AUTHENTICATION_BACKENDS = ["anvil_site.login_throttle.ThrottledModelBackend"]
ANVIL_LOGIN_FAILURE_LIMIT = env.env_int("ANVIL_LOGIN_FAILURE_LIMIT", 5, minimum=1)
ANVIL_LOGIN_LOCKOUT_SECONDS = env.env_int("ANVIL_LOGIN_LOCKOUT_SECONDS", 900, minimum=1)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- static files: ServeStatic serves them with DEBUG off, async under Daphne ---
# (WhiteNoise's middleware is sync-only: under ASGI every file went through a
# thread and Django warned about synchronous iterators.)
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"  # for deployments that run collectstatic
# Finders let a fresh checkout serve the admin's CSS without collectstatic.
SERVESTATIC_USE_FINDERS = True
SERVESTATIC_AUTOREFRESH = DEBUG

# --- security ---------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the console's fetch() calls read it
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
ANVIL_BEHIND_TLS_PROXY = env.env_bool("ANVIL_BEHIND_TLS_PROXY", False)
if ANVIL_BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

# --- REST API ---------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "anvil_site.api_pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 100,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Anvil control-plane API",
    "DESCRIPTION": "Serves, routing decisions, eval runs and API keys. The inference front door "
    "(/v1/*) is documented in the README: it speaks the OpenAI and Anthropic protocols.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Celery (read by anvil_site/celery.py with namespace CELERY) -----------
CELERY_BROKER_URL = env.kombu_url(REDIS_URL)
CELERY_RESULT_BACKEND = env.kombu_url(REDIS_URL)
CELERY_TASK_ALWAYS_EAGER = False  # tests and the embedded stack use a real worker
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_TIME_LIMIT = env.env_int("ANVIL_TASK_TIME_LIMIT", 900, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = max(CELERY_TASK_TIME_LIMIT - 30, 5)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # lifecycle tasks are long; do not hoard them
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = 5
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_timeout": 10, "socket_connect_timeout": 5}
CELERY_REDIS_SOCKET_TIMEOUT = 10
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = 5
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Synced into django-celery-beat's tables at beat start: editable in the admin.
CELERY_BEAT_SCHEDULE = {
    "serves-status-sweep": {
        "task": "serves.sweep_status",
        "schedule": env.env_float("ANVIL_STATUS_SWEEP_SECONDS", 60.0, minimum=5.0),
        "options": {"expires": 55},  # a sweep that could not start in time is skipped, not queued up
    },
    "routing-drain-decisions": {"task": "routing.drain_decisions", "schedule": 1.0, "options": {"expires": 5}},
    "routing-prune-decisions": {"task": "routing.prune_decisions", "schedule": 3600.0},
    # A loaded serve whose process died is noticed within seconds, not at the next sweep.
    "serves-watch": {"task": "serves.watch", "schedule": 3.0, "options": {"expires": 3}},
    "routing-mark-stale-profiles": {"task": "routing.mark_stale_profiles", "schedule": 60.0,
                                    "options": {"expires": 55}},
    # A run whose worker died and was not taken over is failed within minutes (evals/runs.py, leases).
    "evals-reap-abandoned-runs": {"task": "evals.reap_abandoned_runs", "schedule": 60.0, "options": {"expires": 55}},
    # Live calibration: sampled answers go to their judge within seconds, well inside their TTL.
    "evals-drain-calibration": {"task": "evals.drain_calibration", "schedule": 10.0, "options": {"expires": 9}},
}

# --- Docker and Compose (the serve lifecycle) -------------------------------
# Empty: `docker compose` when the plugin works, else the docker-compose beside this Python.
ANVIL_COMPOSE_COMMAND = env.env_str("ANVIL_COMPOSE_COMMAND", "")
ANVIL_COMPOSE_TIMEOUT = env.env_float("ANVIL_COMPOSE_TIMEOUT", 900.0, minimum=5.0)
ANVIL_DOCKER_TIMEOUT = env.env_float("ANVIL_DOCKER_TIMEOUT", 15.0, minimum=1.0)

# --- Channels ---------------------------------------------------------------
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{ANVIL_REDIS_PREFIX}:channels"},
    }
}

# --- the front door ---------------------------------------------------------
# How often a web process checks whether API keys changed (seconds).
ANVIL_KEY_SYNC_INTERVAL = env.env_float("ANVIL_KEY_SYNC_INTERVAL", 1.0, minimum=0.0)
# How often a web process checks whether the serves table changed (seconds).
ANVIL_SERVE_SYNC_INTERVAL = env.env_float("ANVIL_SERVE_SYNC_INTERVAL", 1.0, minimum=0.0)

# The web process's server (anvil_site/launcher.py::web_argv): uvicorn, with uvloop and httptools, served
# 1.87x Daphne's requests/s (bench/RESULTS.md); daphne stays available.
ANVIL_WEB_SERVER = env.env_choice("ANVIL_WEB_SERVER", "uvicorn", ("uvicorn", "daphne"))
# Requests larger than this are refused with 413 (bytes).
ANVIL_MAX_BODY_BYTES = env.env_int("ANVIL_MAX_BODY_BYTES", 32 * 1024 * 1024, minimum=1024)
# The whole request body must arrive within this many seconds (a trickled body holds no request open).
ANVIL_BODY_TIMEOUT = env.env_float("ANVIL_BODY_TIMEOUT", 30.0, minimum=0.1)
# In-flight requests per web process, and per API key within it; over either: 429.
ANVIL_MAX_CONCURRENCY = env.env_int("ANVIL_MAX_CONCURRENCY", 512, minimum=1)
ANVIL_MAX_CONCURRENCY_PER_KEY = env.env_int("ANVIL_MAX_CONCURRENCY_PER_KEY", 128, minimum=1)
# Upstream connections: pool size per web process, and timeouts (seconds).
ANVIL_UPSTREAM_POOL_SIZE = env.env_int("ANVIL_UPSTREAM_POOL_SIZE", 256, minimum=1)
ANVIL_UPSTREAM_CONNECT_TIMEOUT = env.env_float("ANVIL_UPSTREAM_CONNECT_TIMEOUT", 5.0, minimum=0.1)
# A first-byte timeout is not an inter-token timeout: a streamed answer's first event waits for the
# prefill, a whole answer's first byte waits for the model to finish writing it, and once a body has
# begun, a long silence means the serve hung.
ANVIL_UPSTREAM_FIRST_BYTE_TIMEOUT = env.env_float("ANVIL_UPSTREAM_FIRST_BYTE_TIMEOUT", 120.0, minimum=0.1)
ANVIL_UPSTREAM_WHOLE_ANSWER_TIMEOUT = env.env_float("ANVIL_UPSTREAM_WHOLE_ANSWER_TIMEOUT", 600.0, minimum=0.1)
ANVIL_UPSTREAM_INTER_TOKEN_TIMEOUT = env.env_float("ANVIL_UPSTREAM_INTER_TOKEN_TIMEOUT", 60.0, minimum=0.1)
# max_tokens sent to an Anthropic upstream when an OpenAI client gave none (Anthropic requires it).
ANVIL_DEFAULT_MAX_TOKENS = env.env_int("ANVIL_DEFAULT_MAX_TOKENS", 4096, minimum=1)

# --- routing ------------------------------------------------------------------
ANVIL_PROFILE_SYNC_INTERVAL = env.env_float("ANVIL_PROFILE_SYNC_INTERVAL", 1.0, minimum=0.0)
# Tiers from cheapest to most capable: the policy's order.
ANVIL_TIER_ORDER = env.env_list("ANVIL_TIER_ORDER", ["fast", "heavy", "cloud"])
# Tiers billed per token: the metered-cloud gate keeps them for the classes below.
ANVIL_METERED_TIERS = env.env_list("ANVIL_METERED_TIERS", ["cloud"])
ANVIL_CLOUD_WORK_CLASSES = env.env_list("ANVIL_CLOUD_WORK_CLASSES",
                                        ["planning", "multi-file-refactor", "review", "long-context"])
# Attempts per request (the first try and its fallbacks).
ANVIL_ATTEMPT_BUDGET = env.env_int("ANVIL_ATTEMPT_BUDGET", 3, minimum=1)
# A stream waiting in a serve's queue (a load, a full serve) gets an SSE comment this often, so that
# proxies do not cut a connection that has said nothing yet (docs/pool.md).
ANVIL_QUEUE_HEARTBEAT = env.env_float("ANVIL_QUEUE_HEARTBEAT", 15.0, minimum=0.1)
# How often a request waiting for an on-demand load asks for the load again (it is one load: the claim).
ANVIL_ON_DEMAND_RETRIGGER = env.env_float("ANVIL_ON_DEMAND_RETRIGGER", 2.0, minimum=0.1)
# A model with replica_max > 1 loads another replica once a request has waited this long for a loaded one;
# an extra replica without a ttl of its own stops after this long idle (serves/replicas.py).
ANVIL_SCALE_AFTER = env.env_float("ANVIL_SCALE_AFTER", 2.0, minimum=0.0)
ANVIL_REPLICA_TTL = env.env_int("ANVIL_REPLICA_TTL", 300, minimum=1)
# A web process's max_concurrent slots are a field in Redis that expires after this long unless refreshed
# (every 30 s while requests hold them): a dead process's slots are free again after it (docs/keys.md).
ANVIL_KEY_LEASE_SECONDS = env.env_int("ANVIL_KEY_LEASE_SECONDS", 120, minimum=45)
# A host agent (manage.py runhost) beats this often; three missed beats make its serves unknown (serves/hosts.py).
ANVIL_HOST_HEARTBEAT = env.env_float("ANVIL_HOST_HEARTBEAT", 5.0, minimum=0.2)
# Where this machine's engines listen (the presets' --host, {bind} in a command): loopback when web and engines
# share a machine; on a GPU host, the address the web nodes reach its serves at (docs/deploy.md).
ANVIL_ENGINE_BIND = env.env_str("ANVIL_ENGINE_BIND", "127.0.0.1")
# The launcher (make run) also runs this machine's host agent under this name when set (serves/hosts.py).
ANVIL_HOST_NAME = env.env_str("ANVIL_HOST_NAME", "")
# An allow-with-verify answer is held at most this many bytes before it is verified.
ANVIL_COMMIT_WINDOW_BYTES = env.env_int("ANVIL_COMMIT_WINDOW_BYTES", 8 * 1024 * 1024, minimum=1024)
ANVIL_BREAKER_FAILURES = env.env_int("ANVIL_BREAKER_FAILURES", 3, minimum=1)
ANVIL_BREAKER_COOLDOWN = env.env_float("ANVIL_BREAKER_COOLDOWN", 30.0, minimum=0.0)
ANVIL_BREAKER_PROBE_TTL = env.env_float("ANVIL_BREAKER_PROBE_TTL", 60.0, minimum=1.0)
ANVIL_DECISION_RETENTION_DAYS = env.env_int("ANVIL_DECISION_RETENTION_DAYS", 30, minimum=1)
ANVIL_DECISION_RETENTION_ROWS = env.env_int("ANVIL_DECISION_RETENTION_ROWS", 1_000_000, minimum=1000)

# --- evals ------------------------------------------------------------------
# A worker running an eval run holds a lease on it this long, renewed every sixth of it; a lease that
# lapses means the worker died: a redelivery of the task takes the run over, else the reaper fails it.
ANVIL_EVAL_LEASE_SECONDS = env.env_float("ANVIL_EVAL_LEASE_SECONDS", 45.0, minimum=2.0)
# Live calibration: how long a sampled request/answer pair may wait in Redis for its judge (then it is gone).
ANVIL_CALIBRATION_SAMPLE_TTL = env.env_float("ANVIL_CALIBRATION_SAMPLE_TTL", 3600.0, minimum=1.0)
# A profile cell leaves its default verdict only once this many samples were graded: one bad answer is no verdict.
ANVIL_PROFILE_MIN_SAMPLES = env.env_int("ANVIL_PROFILE_MIN_SAMPLES", 5, minimum=1)

# --- logging: to stderr, one line per record; never request bodies ---------
LOG_LEVEL = env.env_str("ANVIL_LOG_LEVEL", "INFO").upper()
# One line per front-door request (id, key, serve, status, TTFT, tokens, outcome; never prompt text).
ANVIL_ACCESS_LOG = env.env_bool("ANVIL_ACCESS_LOG", True)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line"}},
    "root": {"handlers": ["stderr"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"level": "INFO" if LOG_LEVEL == "DEBUG" else LOG_LEVEL},
        "daphne": {"level": "WARNING"},
        "anvil.access": {"level": "INFO" if ANVIL_ACCESS_LOG else "WARNING"},
        "httpx": {"level": "WARNING"},  # one INFO line per request is noise
        # The decision-log drain runs every second: a line per task run would bury everything else.
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.beat": {"level": "WARNING"},
    },
}

# The problems found while reading the environment, for anvil_site.checks.
ANVIL_SETTING_PROBLEMS = env.PROBLEMS
