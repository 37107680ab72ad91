"""Live calibration: a judge grades samples of live traffic, and the grades feed the candidate profile.

An operator turns sampling on for a serve and a work class with a rate (``set_sampling``: the
admin's *Calibration settings*, or ``manage.py calibration set fast chat 1%``) and names the judge
serve that grades the samples (never the sampled serve itself). Each web process then samples that
share of the serve's requests in that work class (``inference/calibration.py``): once the client
has the answer, the request and answer go to Redis as text, with a TTL
(``ANVIL_CALIBRATION_SAMPLE_TTL``, default an hour).

``drain_samples`` (the Celery task ``evals.drain_calibration``, every 10 s under beat) sends each
waiting sample to its judge on the rubric of its work class (``evals/judge.py``) and deletes it
once graded. The grade is stored as a result of the serve's *calibration run* (one per serve,
growing as samples are graded, so every accepted sample counts and not only the newest batch) with
a ``calibration`` grade: pending in the review queue, counted for the serve's cell once an
operator accepts it. What reaches the database is the judge's points, the sample's id, time and
serve identity: never the request's or the answer's text ("no prompt text at rest"), and nothing
logs them either. A judge answer that is not the rubric's JSON, or a refused judge request, is a
harness error (recorded without any text, never graded); a judge that does not answer leaves the
samples waiting until it does or their TTL passes.

Turning sampling off (rate 0, or the setting deleted) deletes the cell's waiting samples at once;
each drain also clears any a web process pushed before it saw the change.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from evals.client import Client, TargetRefused
from evals.errors import BadParameters, EvalError, TargetUnavailable, UnknownServe
from evals.judge import MalformedJudgeAnswer, ask_judge, find_judge, judges_itself, refuse_self_judging, rubric_for
from evals.models import CalibrationSetting, EvalResult, EvalRun, Grade, RunKind
from evals.targets import target_of_serve
from inference.calibration import queue_key, queue_prefix, registry_key, sample_key, sample_prefix
from routing.models import WorkClass
from serves.models import Serve

log = logging.getLogger(__name__)

# Samples graded per drain: a judge answers in seconds, so a drain stays well inside its task's time limit,
# and the next one (10 s later) takes the rest.
DRAIN_BATCH = 50
# One drain at a time: two would race to make a serve's calibration run. Released at the end; this
# bounds how long a drain killed mid-way holds it.
LOCK_SECONDS = 600
HARNESS_ERROR = getattr(EvalResult.Verdict, "HARNESS_ERROR", EvalResult.Verdict.ERROR)

# Atomic: the queue's ids, each id's sample, the queue, and its entry in the registry of queues.
_PURGE = """
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
for _, id in ipairs(ids) do redis.call('DEL', ARGV[1] .. id) end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], KEYS[1])
return #ids
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)


def _lock_key() -> str:
    return f"{settings.ANVIL_REDIS_PREFIX}:calibration:drain-lock"


# --- the operator's switch ------------------------------------------------------
def parse_rate(text: str) -> float:
    """``0.01``, ``1%`` or ``1 %`` -> 0.01."""
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw.rstrip("%").strip())
    except ValueError:
        raise BadParameters(f"a rate is a share from 0 to 1 (0.01) or a percentage (1%), not {text!r}") from None
    value = value / 100 if percent else value
    if not 0.0 <= value <= 1.0 or value != value:
        raise BadParameters(f"a rate is from 0 to 1 (0 % to 100 %), not {text!r}")
    return value


def set_sampling(serve: str, work_class: str, rate: float, *, judge: str | None = None,
                 by: str = "") -> CalibrationSetting:
    """Sample ``rate`` of ``serve``'s live ``work_class`` requests for ``judge`` (kept when not given).

    A rate of 0 turns sampling off and deletes the cell's waiting samples.
    """
    if work_class not in WorkClass.values:
        raise BadParameters(f"unknown work class {work_class!r}", hint=f"work classes: {', '.join(WorkClass.values)}")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise BadParameters(f"a rate is from 0 to 1, not {rate!r}")
    sampled = Serve.objects.filter(name=serve).first()
    if sampled is None:
        raise UnknownServe(f"unknown serve {serve!r}")
    with transaction.atomic():
        setting = (CalibrationSetting.objects.select_for_update().filter(serve=sampled, work_class=work_class).first()
                   or CalibrationSetting(serve=sampled, work_class=work_class))
        if judge is not None:
            setting.judge_serve = find_judge(judge)
        if setting.judge_serve is not None:
            refuse_self_judging(setting.judge_serve, [("serve", sampled.name)],
                                hint="a judge grades other serves' answers: choose another judge")
        elif rate:
            raise BadParameters(f"sampling {serve} / {work_class} needs a judge serve to grade the samples",
                                hint="name one: --judge NAME")
        setting.rate = float(rate)
        setting.updated_by = by[:150]
        setting.save()
    if not setting.rate:
        try:
            purge_samples(sampled.name, work_class)
        except redis.RedisError as error:
            # Off is off in the database already; the samples expire with their TTL, and the next drain
            # (which purges cells nobody samples) deletes them sooner once Redis answers.
            log.warning("calibration: sampling of %s / %s is off, but its waiting samples could not be deleted "
                        "now (%s); the next drain deletes them", sampled.name, work_class, type(error).__name__)
    return setting


def turn_off(serve: str, work_class: str | None = None, *, by: str = "") -> int:
    """Stop sampling ``serve`` (in one work class, or all) and delete its waiting samples; returns settings changed."""
    settings_rows = CalibrationSetting.objects.filter(serve__name=serve)
    if work_class:
        settings_rows = settings_rows.filter(work_class=work_class)
    changed = 0
    for row in settings_rows.select_related("serve"):
        set_sampling(row.serve.name, row.work_class, 0.0, by=by)
        changed += 1
    return changed


def forget_setting(setting_id: int) -> None:
    """Delete a setting (the admin's delete) and its waiting samples (else the next drain does)."""
    row = CalibrationSetting.objects.select_related("serve").filter(pk=setting_id).first()
    if row is not None:
        name, work_class = row.serve.name, row.work_class
        row.delete()
        try:
            purge_samples(name, work_class)
        except redis.RedisError as error:
            log.warning("calibration: the waiting samples of %s / %s could not be deleted now (%s); the next "
                        "drain deletes them", name, work_class, type(error).__name__)


def purge_samples(serve: str, work_class: str, client: redis.Redis | None = None) -> int:
    """Delete every waiting sample of one serve and work class; returns how many the queue listed."""
    own = client is None
    client = client or _redis()
    try:
        listed = int(client.eval(_PURGE, 2, queue_key(serve, work_class), registry_key(),  # type: ignore[arg-type]
                                 f"{sample_prefix()}{serve}:{work_class}:"))
        # A sample whose id was already taken from the queue (a drain grading it) goes too.
        strays = list(client.scan_iter(match=f"{sample_prefix()}{serve}:{work_class}:*", count=1000))
        if strays:
            client.delete(*strays)
        return listed
    finally:
        if own:
            client.close()


def pending(serve: str, work_class: str) -> int:
    """How many samples of one serve and work class wait for the judge (0 when Redis does not answer)."""
    client = _redis()
    try:
        return int(client.llen(queue_key(serve, work_class)))  # type: ignore[arg-type]
    except redis.RedisError:
        return 0
    finally:
        client.close()


# --- the judge's side -------------------------------------------------------------
@dataclass
class DrainReport:
    graded: int = 0
    harness_errors: int = 0
    expired: int = 0  # listed, but gone past their TTL before the judge got to them
    deferred: int = 0  # left waiting: their judge does not answer
    purged: int = 0  # waiting samples of cells no longer sampled
    busy: bool = False  # another drain was under way: this one did nothing


def drain_samples(limit: int = DRAIN_BATCH) -> DrainReport:
    """Send up to ``limit`` waiting samples to their judges; store the grades; delete the samples."""
    report = DrainReport()
    client = _redis()
    token = uuid.uuid4().hex
    try:
        if not client.set(_lock_key(), token, nx=True, ex=LOCK_SECONDS):
            report.busy = True
            return report
        try:
            active = {(row.serve.name, row.work_class): row for row in CalibrationSetting.objects.filter(
                rate__gt=0, judge_serve__isnull=False, serve__enabled=True).select_related("serve", "judge_serve")}
            _clear_inactive(client, active, report)
            for row in active.values():
                if report.graded + report.harness_errors >= limit:
                    break
                try:
                    _drain_cell(client, row, limit - report.graded - report.harness_errors, report)
                except EvalError as error:  # this cell's judge cannot be asked (its row changed): the others go on
                    log.warning("calibration: %s / %s: %s", row.serve.name, row.work_class, error.describe())
        finally:
            client.eval(_RELEASE, 1, _lock_key(), token)
    finally:
        client.close()
    if report.graded or report.harness_errors or report.deferred or report.purged:
        log.info("calibration: %d samples graded, %d harness errors, %d expired, %d waiting for their judge, "
                 "%d purged", report.graded, report.harness_errors, report.expired, report.deferred, report.purged)
    return report


def _clear_inactive(client: redis.Redis, active: dict[tuple[str, str], CalibrationSetting],
                    report: DrainReport) -> None:
    """Samples of cells nobody samples any more (a web process pushed before it saw sampling turned off)."""
    for raw in client.smembers(registry_key()):  # type: ignore[union-attr]
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        serve, _, work_class = key.removeprefix(queue_prefix()).partition(":")
        if (serve, work_class) not in active:
            report.purged += purge_samples(serve, work_class, client)
        elif not client.exists(key):
            client.srem(registry_key(), key)


def _drain_cell(client: redis.Redis, row: CalibrationSetting, budget: int, report: DrainReport) -> None:
    serve, judge, work_class = row.serve, row.judge_serve, row.work_class
    assert judge is not None
    queue = queue_key(serve.name, work_class)
    if judges_itself(judge, serve.name):  # the setting refuses this; a rename could still make it so
        log.warning("calibration: %s would judge its own answers; its samples are dropped", judge.name)
        report.purged += purge_samples(serve.name, work_class, client)
        return
    rubric = rubric_for(work_class)
    with Client(target_of_serve(judge)) as http:
        for _ in range(budget):
            raw_id = client.lpop(queue)
            if raw_id is None:
                return
            sample_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            key = sample_key(serve.name, work_class, sample_id)
            raw = client.get(key)
            if raw is None:
                report.expired += 1
                continue
            try:
                sample = json.loads(raw)  # type: ignore[arg-type]
                request, answer = str(sample["request"]), str(sample["answer"])
            except (ValueError, KeyError, TypeError):
                client.delete(key)
                report.harness_errors += 1
                continue
            try:
                grade = ask_judge(http, judge, rubric, request, answer)
            except TargetUnavailable:
                client.lpush(queue, sample_id)  # back at the head; it keeps its TTL
                report.deferred += int(client.llen(queue))  # type: ignore[arg-type]
                log.warning("calibration: judge %s does not answer; %s / %s samples wait for it (at most %g s)",
                            judge.name, serve.name, work_class, settings.ANVIL_CALIBRATION_SAMPLE_TTL)
                return
            except (MalformedJudgeAnswer, TargetRefused) as exc:
                _record(serve, judge, work_class, sample, error=_error_without_text(exc))
                report.harness_errors += 1
            else:
                _record(serve, judge, work_class, sample, grade=grade)
                report.graded += 1
            client.delete(key)  # graded (or found ungradable): the text goes


def _error_without_text(exc: Exception) -> str:
    """What went wrong, in words that cannot carry the sample: the judge's own answer may quote it."""
    if isinstance(exc, TargetRefused):
        return (f"harness error: the judge answered HTTP {exc.status}" if exc.status
                else "harness error: the judge's reply was not a chat completion")
    return f"harness error: {exc}"  # MalformedJudgeAnswer's messages never quote the answer (evals/judge.py)


def calibration_run(serve: Serve) -> EvalRun:
    """The serve's calibration run: its graded samples, one measurement that grows (``kind`` calibration)."""
    run = EvalRun.objects.filter(kind=RunKind.CALIBRATION, target_serve=serve).order_by("-pk").first()
    if run is None:
        now = timezone.now()
        run = EvalRun.objects.create(kind=RunKind.CALIBRATION, status=EvalRun.Status.SUCCEEDED, target_serve=serve,
                                     target_name=serve.name, requested_by="calibration", started_at=now,
                                     finished_at=now, parameters={"source": "sampled live traffic"})
    return run


@transaction.atomic
def _record(serve: Serve, judge: Serve, work_class: str, sample: dict[str, Any], *, grade: Any = None,
            error: str = "") -> EvalResult:
    run = calibration_run(serve)
    fingerprint = str(sample.get("fingerprint") or "")[:32]
    details: dict[str, Any] = {"sample": str(sample.get("id", ""))[:32], "judge": judge.name,
                               "rubric": rubric_for(work_class).id, "finish": str(sample.get("finish", ""))[:32]}
    if isinstance(sample.get("at"), int | float):
        details["sampled_at"] = datetime.fromtimestamp(sample["at"], tz=UTC).isoformat()
    if grade is not None:
        details["points"] = grade.points
    result = EvalResult.objects.create(
        run=run, name=f"sample {details['sample'][:12]}", subject=serve.name, work_class=work_class,
        verdict=EvalResult.Verdict.GRADED if grade is not None else HARNESS_ERROR,
        score=grade.score if grade is not None else None, error=error[:500], details=details,
        fingerprint=fingerprint, identity=serve.identity() if fingerprint == serve.fingerprint() else {})
    if grade is not None:
        Grade.objects.create(result=result, source=Grade.Source.CALIBRATION, grader=grade.rubric.id,
                             judge_serve=judge, score=grade.score, dimensions=grade.dimensions,
                             note=grade.note(judge.name))
    count = run.results.count()
    graded = run.results.filter(verdict=EvalResult.Verdict.GRADED).count()
    EvalRun.objects.filter(pk=run.pk).update(
        finished_at=timezone.now(), progress_done=count, progress_total=count,
        summary={"samples": count, "graded": graded, "harness_errors": count - graded, "lines": [
            f"{graded} sampled answers of {serve.name} graded by a judge ({count - graded} harness errors); "
            "the grades count once accepted in the review queue"]})
    return result
