"""Running model fits in the background: a queue, progress, stop, and the result.

One `JobManager` serves the whole app (the page keeps it in ``st.cache_resource``).
It runs at most ``max_running`` fits at once in threads; the others wait in a queue
and know their place in it. A `Job` collects the fit's progress events, can be told
to stop, and on the way out saves its model under ``models/`` with the name the user
chose (a suffix is added, and said, when that name is taken).

Jobs belong to a session id: a session sees only its own jobs. A session that sends
no heartbeat for ``session_timeout`` seconds has gone away, and its jobs are stopped.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vessel_core.cases import Case
from vessel_core.progress import Progress, StopFlag, kept_warnings
from vessel_core.store import DEFAULT_MODELS_DIR, model_class, save_model

logger = logging.getLogger(__name__)

QUEUED, RUNNING, DONE = "queued", "running", "done"
STOPPED, FAILED = "stopped", "failed"
FINISHED = (DONE, STOPPED, FAILED)

_NAME_OK = re.compile(r"[^A-Za-z0-9._-]+")


def default_max_running() -> int:
    """How many fits run at once: ``$VESSEL_MAX_JOBS``, else 1 per 2 CPU cores (1-4)."""
    env = os.environ.get("VESSEL_MAX_JOBS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(
                f"VESSEL_MAX_JOBS must be a whole number >= 1, got {env!r}"
            ) from None
        if value < 1:
            raise ValueError(f"VESSEL_MAX_JOBS must be >= 1, got {value}")
        return value
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def clean_name(name: str) -> str:
    """A model name fit for a folder: letters, digits, ``.``, ``_`` and ``-``.

    Other characters become ``-``; leading dots go (hidden folders are unfinished
    saves). ValueError when nothing is left.
    """
    cleaned = _NAME_OK.sub("-", name.strip()).lstrip(".-").rstrip("-")
    if not cleaned:
        raise ValueError(f"model name must contain a letter or digit, got {name!r}")
    return cleaned


def free_name(root: str | Path, name: str, taken: Sequence[str] = ()) -> str:
    """``name``, else ``name-2``, ``name-3``...: the first free in ``root``."""
    root = Path(root)
    candidate, n = name, 1
    while (root / candidate).exists() or candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


class Job:
    """One fit: its settings, progress events, status and result.

    Attributes
    ----------
    id : str
        Short unique id.
    session_id : str
        The session that owns the job.
    kind : str
        Model kind (``"knn"``, ``"resnet34"``, ``"classic"``).
    settings : dict
        The settings the model was built with.
    name : str
        The model name asked for; ``saved_name`` is the one it got.
    status : {"queued", "running", "done", "stopped", "failed"}
    error : str
        Why the job failed (the message of a `ValueError`, the models' refusal
        of their input; the type and message of anything else), else "".
    notice : str
        Something the user should know (the name was taken, saving failed...).
    warnings : list of str
        The warnings the fit gave (`vessel_core.progress.warn`, each once), e.g.
        cases left out.
    model : model or None
        The fitted model once the job is done or stopped after fitting something.
    saved_path : Path or None
        The model folder under ``models/`` once saved.
    stop_flag : StopFlag
        Set by `stop`; the model's fit polls it.
    """

    def __init__(
        self,
        session_id: str,
        kind: str,
        settings: dict[str, Any],
        name: str,
        factory: Callable[[], Any],
        cases: Sequence[Case],
        selection: Any = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.session_id = session_id
        self.kind = kind
        self.settings = dict(settings)
        self.name = name
        self.factory = factory
        self.cases = list(cases)
        self.selection = selection
        self.status = QUEUED
        self.error = ""
        self.notice = ""
        self.warnings: list[str] = []
        self.model: Any = None
        self.saved_path: Path | None = None
        self.saved_name = ""
        self.stop_flag = StopFlag()
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self._events: list[Progress] = []
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    # progress events arrive from the worker thread and are read by pages
    def add_event(self, event: Progress) -> None:
        """Record one progress event (the callback handed to ``model.fit``)."""
        with self._lock:
            self._events.append(event)

    def events(self, step: str | None = None) -> list[Progress]:
        """A copy of the events so far, only those of ``step`` if given."""
        with self._lock:
            events = list(self._events)
        if step is None:
            return events
        return [e for e in events if e.step == step]

    @property
    def last_event(self) -> Progress | None:
        with self._lock:
            return self._events[-1] if self._events else None

    @property
    def finished_ok(self) -> bool:
        """True when the job ended with a model (done, or stopped after fitting)."""
        return self.status in (DONE, STOPPED) and self.model is not None

    @property
    def active(self) -> bool:
        return self.status in (QUEUED, RUNNING)

    @property
    def seconds(self) -> float:
        """Seconds spent running so far (0 while queued)."""
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    def stop(self) -> None:
        """Ask the fit to stop; a queued job will not start."""
        self.stop_flag.set()

    def __repr__(self) -> str:
        return f"Job({self.id}, {self.kind}, {self.name!r}, {self.status})"


class JobManager:
    """Runs jobs in threads, at most ``max_running`` at a time, the rest queued.

    Parameters
    ----------
    max_running : int, optional
        Fits running at once; default `default_max_running`.
    models_dir : path, default ``models/``
        Where finished models are saved.
    session_timeout : float, default 300
        Seconds without a heartbeat after which a session's jobs are stopped.
    reap_every : float or None, default 30
        Seconds between checks for gone sessions in a background thread; None runs
        no thread (call `reap` yourself).
    clock : callable, default time.monotonic
        Time source for heartbeats (tests pass a fake one).
    """

    def __init__(
        self,
        max_running: int | None = None,
        models_dir: str | Path = DEFAULT_MODELS_DIR,
        session_timeout: float = 300.0,
        reap_every: float | None = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_running is None:
            max_running = default_max_running()
        if int(max_running) < 1:
            raise ValueError(f"max_running must be >= 1, got {max_running!r}")
        self.max_running = int(max_running)
        self.models_dir = Path(models_dir)
        self.session_timeout = float(session_timeout)
        self._clock = clock
        self._lock = threading.RLock()
        self._save_lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._running: set[str] = set()
        self._heartbeats: dict[str, float] = {}
        self._closed = threading.Event()
        if reap_every is not None:
            reaper = threading.Thread(
                target=self._reap_loop,
                args=(float(reap_every),),
                daemon=True,
                name="vessel-jobs-reaper",
            )
            reaper.start()

    def submit(
        self,
        session_id: str,
        kind: str,
        settings: dict[str, Any],
        cases: Sequence[Case],
        selection: Any = None,
        name: str | None = None,
        factory: Callable[[], Any] | None = None,
    ) -> Job:
        """Queue a fit and return its job; it starts as soon as a slot is free.

        Parameters
        ----------
        session_id : str
            Owner of the job.
        kind : str
            Model kind, for `vessel_core.store.model_class`.
        settings : dict
            Passed to the model class: ``model_class(kind)(**settings)``.
        cases : sequence of Case
            Training cases (the job lets go of them once it has finished).
        selection : Selection, optional
            Undersampling choice passed to ``fit``.
        name : str, optional
            Model folder name; default ``"<kind>-<job id>"``.
        factory : callable, optional
            Builds the model instead of ``model_class(kind)(**settings)``.
        """
        if not cases:
            raise ValueError("cases is empty: a model needs at least one case to fit")
        if factory is None:
            cls = model_class(kind)  # fails here, in the caller, for a wrong kind
            cls(**settings)  # so do bad settings, before anything is queued

            def factory() -> Any:
                return cls(**settings)

        job = Job(session_id, kind, settings, "", factory, cases, selection)
        job.name = clean_name(name) if name else f"{kind}-{job.id}"
        if name and job.name != name.strip():
            job.notice = f"Model name {name!r} was changed to {job.name!r}."
        with self._lock:
            self._jobs[job.id] = job
            self._queue.append(job)
            self._heartbeats[session_id] = self._clock()
        logger.info("queued %s for session %s", job, session_id)
        self._pump()
        return job

    def jobs(self, session_id: str) -> list[Job]:
        """The jobs of one session, oldest first."""
        with self._lock:
            return [j for j in self._jobs.values() if j.session_id == session_id]

    def get(self, session_id: str, job_id: str) -> Job | None:
        """A job of this session by id; None for another session's job."""
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and job.session_id == session_id else None

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job to start, 2 after it...; None when not queued."""
        with self._lock:
            for i, queued in enumerate(self._queue, start=1):
                if queued is job:
                    return i
        return None

    def stop(self, session_id: str, job_id: str) -> bool:
        """Stop a job of this session; False when it has no such job."""
        job = self.get(session_id, job_id)
        if job is None:
            return False
        self._stop(job)
        return True

    def forget(self, session_id: str, job_id: str) -> bool:
        """Drop a finished job of this session from the list (its saved model stays)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.session_id != session_id or job.active:
                return False
            del self._jobs[job_id]
        return True

    def heartbeat(self, session_id: str) -> None:
        """Record that a session is still there."""
        with self._lock:
            self._heartbeats[session_id] = self._clock()

    def reap(self) -> list[Job]:
        """Stop the jobs of sessions silent for ``session_timeout``; return them.

        Finished jobs of those sessions are forgotten (their models stay saved);
        the jobs stopped now are forgotten by a later call, once they have ended.
        """
        now = self._clock()
        with self._lock:
            gone = {
                sid
                for sid, seen in self._heartbeats.items()
                if now - seen > self.session_timeout
            }
            stopped = [
                j for j in self._jobs.values() if j.session_id in gone and j.active
            ]
            for job_id in [
                j.id
                for j in self._jobs.values()
                if j.session_id in gone and not j.active
            ]:
                del self._jobs[job_id]
            # a session is forgotten once none of its jobs is left
            left = {j.session_id for j in self._jobs.values()}
            for sid in gone - left:
                del self._heartbeats[sid]
        for job in stopped:
            logger.info("session %s went away; stopping %s", job.session_id, job)
            self._stop(job)
        return stopped

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until ``job`` has finished; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while job.active:
            if deadline is not None and time.monotonic() > deadline:
                return False
            thread = job.thread
            if thread is not None:
                thread.join(0.05)
            else:
                time.sleep(0.02)
        return True

    def close(self) -> None:
        """Stop every job and the reaper thread."""
        self._closed.set()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self._stop(job)

    # internals --------------------------------------------------------------------

    def _stop(self, job: Job) -> None:
        job.stop()
        with self._lock:
            if job.status == QUEUED:
                self._queue.remove(job)
                job.status = STOPPED
                job.finished = time.time()
                job.notice = "Stopped before it started."

    def _pump(self) -> None:
        """Start queued jobs while there are free slots."""
        with self._lock:
            while self._queue and len(self._running) < self.max_running:
                job = self._queue.popleft()
                job.status = RUNNING
                job.started = time.time()
                self._running.add(job.id)
                job.thread = threading.Thread(
                    target=self._run,
                    args=(job,),
                    daemon=True,
                    name=f"vessel-job-{job.id}",
                )
                job.thread.start()

    def _run(self, job: Job) -> None:
        try:
            with kept_warnings(into=job.warnings):  # the fit's own, shown with it
                self._fit(job)
        finally:
            job.finished = time.time()
            job.cases, job.selection = [], None  # the images are the session's
            with self._lock:
                self._running.discard(job.id)
            self._pump()

    def _fit(self, job: Job) -> None:
        logger.info("starting %s", job)
        try:
            model = job.factory()
            model.fit(
                job.cases,
                selection=job.selection,
                on_progress=job.add_event,
                stop=job.stop_flag,
            )
        except Exception as exc:  # a failed fit must not take the server down
            if job.stop_flag.is_set():  # the user's stop, not a failure
                logger.info("%s stopped: %s", job, exc)
                job.notice = f"Stopped before a whole model was fitted: {exc}"
                job.status = STOPPED
                return
            logger.exception("%s failed", job)
            job.error = _user_message(exc)
            job.status = FAILED
            return

        job.model = model
        try:
            self._save(job)
        except Exception as exc:
            logger.exception("saving %s failed", job)
            if job.stop_flag.is_set():
                # stopped before anything was fitted: there is nothing to keep
                job.model = None
                job.notice = f"Stopped before a model was fitted ({exc})."
            else:
                job.notice = f"The model is kept in this session but not saved: {exc}"
        job.status = STOPPED if job.stop_flag.is_set() else DONE
        logger.info("finished %s", job)

    def _save(self, job: Job) -> None:
        """Save the job's model under a free name, saying so when it changed."""
        with self._save_lock:
            name = free_name(self.models_dir, job.name)
            path = save_model(job.model, self.models_dir / name)
        job.saved_name, job.saved_path = name, path
        if name != job.name:
            taken = (
                f"A model named {job.name!r} already exists; this one was saved as "
                f"{name!r}."
            )
            job.notice = f"{job.notice} {taken}".strip()

    def _reap_loop(self, every: float) -> None:
        while not self._closed.wait(every):
            try:
                self.reap()
            except Exception:  # keep reaping whatever one pass ran into
                logger.exception("reaping gone sessions failed")


def _user_message(exc: BaseException) -> str:
    """What a failure says to the user: the message of a refused input
    (`ValueError`: the models' own checks), else the exception's type too."""
    if isinstance(exc, ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
