"""The records that cross a process boundary or land in storage, defined in one place.

* ``WorkerIdentity``: where a replica runs (``PropagationWorker.ready``; copied into results and the summary).
* ``WorkerResult``: what ``PropagationWorker.process`` returns for one video: done, or failed with a ``Fault``
  that says whether another attempt could succeed. The driver adds the attempts when the result is final.
* ``WorkerStatus``: what ``PropagationWorker.status`` answers while a video runs (progress, time budgets).
* ``DoneMarker`` / ``FailedMarker``: the JSON bodies of ``_state/done/{video_id}.json`` and
  ``_state/failed/{video_id}.json`` under an output prefix (schema in DESIGN.md, "Output prefix"). They read markers
  written before these records existed (then the whole worker record plus ``masklets``/``reason`` and ``time``),
  and ignore keys they do not know.
* ``PrefixIdentity``: the part of a prefix's provenance that must match to resume there.
* ``WorkerStartError``, ``ProvenanceError``, ``ClaimLost``: the errors raised on one side and reported on the other.

Nothing here imports Ray, torch or storage: the driver, the actors and the I/O layer all import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 130  # every job's exit status (README)


class Status(str, Enum):
    """How a video ended."""

    DONE = "done"
    FAILED = "failed"


class Fault(str, Enum):
    """Why a video failed; ``retryable`` says whether another attempt could succeed."""

    BAD_INPUT = "bad_input"  # corrupt or unreadable video, prompt outside the video: permanent
    INPUT_UNAVAILABLE = "input_unavailable"  # the video's storage did not answer
    ERROR = "error"  # any other exception (a storage outage that outlasted output.retry_s among them)
    OUT_OF_MEMORY = "oom"  # retried with half the objects per batched step
    GPU_FAULT = "device"  # the process's CUDA context is lost: the driver has Ray replace it
    DIED = "died"  # the worker process died (or was killed) with the video in flight
    TIMEOUT = "timeout"  # the video ran past its time budget; its worker was killed
    NO_WORKERS = "no_workers"  # every worker was gone before the video could run
    CLAIM_LOST = "claim_lost"  # another job took the output prefix over: nothing more may be written there

    @property
    def retryable(self) -> bool:
        """Whether another attempt could succeed."""
        return self not in (Fault.BAD_INPUT, Fault.NO_WORKERS, Fault.CLAIM_LOST)


@dataclass(frozen=True)
class WorkerIdentity:
    """Where a replica runs: Ray node, process, torch device and compute dtype."""

    node_id: str
    pid: int
    device: str
    dtype: str

    def to_json(self) -> dict[str, Any]:
        """The four fields as a JSON object."""
        return {"node_id": self.node_id, "pid": self.pid, "device": self.device, "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerIdentity | None:
        """The identity held in ``data`` (a marker or summary entry); None when it names no worker."""
        if "node_id" not in data or "pid" not in data:
            return None
        return cls(str(data["node_id"]), int(data["pid"]), str(data.get("device", "")), str(data.get("dtype", "")))


@dataclass(frozen=True)
class WorkerResult:
    """One attempt at one video, as the worker (or, when the worker died, the driver) reports it."""

    video_id: str
    fault: Fault | None = None  # None: done
    error: str | None = None  # one line naming the cause, when failed
    frames: int = 0
    objects: int = 0
    seconds: float = 0.0
    digest: str = ""  # the task's digest (``VideoTask.digest``), kept in the done marker
    object_batch: int | None = None  # objects per batched step of an attempt that ran out of memory
    worker: WorkerIdentity | None = None  # None when no worker reported (it died, or none was left)
    attempts: int = 0  # set by the driver on the final result: attempts over all actors

    @property
    def status(self) -> Status:
        """Done or failed."""
        return Status.DONE if self.fault is None else Status.FAILED

    @property
    def retryable(self) -> bool:
        """Whether another attempt could succeed (never for a done video)."""
        return self.fault is not None and self.fault.retryable


@dataclass
class WorkerStatus:
    """The video a worker is on, updated by the worker as frames go by; ``started`` is wall-clock seconds."""

    video_id: str
    started: float
    objects: int
    frames: int = 0  # 0 until the video is open
    frames_done: int = 0


@dataclass(frozen=True)
class DoneMarker:
    """``_state/done/{video_id}.json``: written after the masklet file is complete; resume reads ``digest``."""

    video_id: str
    digest: str  # "" in a marker that carries none: such a video is recomputed
    masklets: str  # URI of the masklet file
    frames: int
    objects: int
    seconds: float
    time: float  # when the marker was written (Unix time)
    worker: WorkerIdentity | None

    def to_json(self) -> dict[str, Any]:
        """The marker's JSON object (worker identity fields at the top level)."""
        return {"status": Status.DONE.value, "video_id": self.video_id, "digest": self.digest,
                "masklets": self.masklets, "frames": self.frames, "objects": self.objects, "seconds": self.seconds,
                "time": self.time, **(self.worker.to_json() if self.worker else {})}

    @classmethod
    def from_json(cls, data: Any) -> DoneMarker:
        """The marker in ``data``; ValueError when it is not one (a truncated or foreign file)."""
        try:
            return cls(str(data["video_id"]), str(data.get("digest") or ""), str(data.get("masklets", "")),
                       int(data.get("frames", 0)), int(data.get("objects", 0)), float(data.get("seconds", 0.0)),
                       float(data.get("time", 0.0)), WorkerIdentity.from_json(data))
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a done marker: {exc}") from exc


@dataclass(frozen=True)
class FailedMarker:
    """``_state/failed/{video_id}.json``: a video that failed after its retries (a later success removes it)."""

    video_id: str
    reason: str
    fault: Fault | None  # None in markers that predate the fault kinds and did not name one
    retryable: bool  # whether another attempt could have succeeded
    attempts: int
    frames: int
    objects: int
    seconds: float
    time: float
    worker: WorkerIdentity | None
    object_batch: int | None = None

    @classmethod
    def of(cls, result: WorkerResult, time: float) -> FailedMarker:
        """The marker of a final failed ``result``."""
        return cls(result.video_id, result.error or "", result.fault, result.retryable, result.attempts,
                   result.frames, result.objects, result.seconds, time, result.worker, result.object_batch)

    def to_json(self) -> dict[str, Any]:
        """The marker's JSON object (worker identity fields at the top level)."""
        body: dict[str, Any] = {
            "status": Status.FAILED.value, "video_id": self.video_id, "reason": self.reason,
            "fault": self.fault.value if self.fault else None, "retryable": self.retryable,
            "attempts": self.attempts, "frames": self.frames, "objects": self.objects, "seconds": self.seconds,
            "time": self.time, **(self.worker.to_json() if self.worker else {})}
        if self.object_batch is not None:
            body["object_batch"] = self.object_batch
        return body

    @classmethod
    def from_json(cls, data: Any) -> FailedMarker:
        """The marker in ``data``; ValueError when it is not one."""
        try:
            fault = Fault(data["fault"]) if data.get("fault") in {f.value for f in Fault} else None
            batch = data.get("object_batch")
            return cls(str(data["video_id"]), str(data.get("reason") or data.get("error") or ""), fault,
                       bool(data.get("retryable", fault is not None and fault.retryable)),
                       int(data.get("attempts", 0)), int(data.get("frames", 0)), int(data.get("objects", 0)),
                       float(data.get("seconds", 0.0)), float(data.get("time", 0.0)), WorkerIdentity.from_json(data),
                       None if batch is None else int(batch))
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a failed marker: {exc}") from exc


class WorkerStartError(RuntimeError):
    """A replica cannot serve (e.g. Ray gave it a GPU torch cannot use), or not one replica came up: raised in the
    actor, and by the driver's pool, whose caller refuses the job."""


class ProvenanceError(ValueError):
    """The output prefix holds results of another model or checkpoint, format or decoder."""


class ClaimLost(ProvenanceError):
    """The output prefix no longer holds this job's claim (another job replaced its record): the job stops writing
    there."""


@dataclass(frozen=True)
class PrefixIdentity:
    """What makes two runs' results comparable: model, image size, the engine options that change masks and the
    checkpoint's sha256; for a checkpoint without one (random weights) its name and the random seed instead. Also
    the masklet format and the video decoder, so that a prefix never mixes files of two formats or frames of two
    decoders (None where the record names none: an image prefix, or one of an earlier release, which the prefix
    completes from what it holds). Config and package version may differ."""

    model: str
    image_size: int | None
    session: dict | None = field(default=None, hash=False)
    checkpoint_sha256: str | None = None
    checkpoint: str | None = None  # only without a sha256
    random_seed: int | None = None  # only without a sha256
    output_format: str | None = None  # the record's "format": output.format of a video prefix
    decoder: str | None = None  # the record's "decoder": data.decoder of a video prefix

    @classmethod
    def of(cls, provenance: dict[str, Any]) -> PrefixIdentity:
        """The identity of a provenance record (``pipeline.driver.provenance.job_provenance``, or a prefix's
        ``_state/provenance.json``); ValueError when it names no model or checkpoint."""
        prov = provenance
        if "model" not in prov or not (prov.get("checkpoint_sha256") or "checkpoint" in prov):
            raise ValueError(f"provenance needs 'model' and 'checkpoint_sha256' (or 'checkpoint'), got {sorted(prov)}")
        fmt, decoder = prov.get("format"), prov.get("decoder")
        if prov.get("checkpoint_sha256"):
            return cls(prov["model"], prov.get("image_size"), prov.get("session"), prov["checkpoint_sha256"],
                       output_format=fmt, decoder=decoder)
        return cls(prov["model"], prov.get("image_size"), prov.get("session"), None, prov["checkpoint"],
                   prov.get("random_seed"), fmt, decoder)

    def to_json(self) -> dict[str, Any]:
        """The model's identity as a JSON object: what task digests hash (so its keys and values never change; the
        format and decoder are not in it: one prefix holds only one of each)."""
        ident: dict[str, Any] = {"model": self.model, "image_size": self.image_size, "session": self.session}
        if self.checkpoint_sha256:
            ident["checkpoint_sha256"] = self.checkpoint_sha256
        else:
            ident["checkpoint"] = self.checkpoint
            ident["random_seed"] = self.random_seed
        return ident

    def differences(self, other: PrefixIdentity) -> dict[str, tuple[Any, Any]]:
        """Each field that differs: name → (this value, ``other``'s); a format or decoder one side does not know
        (None) differs from nothing."""
        mine, theirs = self.to_json(), other.to_json()
        changed = {k: (mine.get(k), theirs.get(k)) for k in sorted(set(mine) | set(theirs))
                   if mine.get(k) != theirs.get(k)}
        for key, a, b in (("format", self.output_format, other.output_format),
                          ("decoder", self.decoder, other.decoder)):
            if a is not None and b is not None and a != b:
                changed[key] = (a, b)
        return changed
