"""Live sessions of the VLM-3R service, without Ray: what a ``GeometryEncoder`` replica keeps per
open stream, the record it writes beside each snapshot, and the errors the ingress answers.

One :class:`HeldSession` per session in the replica that serves it: the library's
``vlm3r_core.live.LiveSession`` (CUT3R state, retained keyframes) plus what the service adds,
its :class:`SessionRecord` (owner, TTL, takeover epoch) and a per-session frame-rate window.

Storage (``Vlm3rArgs.storage_uri``), per session id::

    <storage_uri>/sessions/<id>/session.json      SessionRecord (JSON), written at open and with each snapshot
    <storage_uri>/sessions/<id>/state.safetensors LiveSession.save(): the state after `snapshot_frames` frames

A snapshot is written every ``snapshot_every_frames`` pushed frames, so a session whose replica
dies resumes on another replica with at most that many frames lost (fewer than N after the first
snapshot: the frames pushed since the last multiple of N). The record's ``epoch`` grows each time
a replica loads the session from storage; a replica whose copy is older than the stored epoch
drops it (the session moved to another replica) and answers 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np

from vlm3r_core import storage
from vlm3r_core.live import LiveSession

SNAPSHOT_NAME, RECORD_NAME = "state.safetensors", "session.json"
RATE_WINDOW_S = 1.0  # frames per second are counted over a sliding window of this length


class SessionError(Exception):
    """Base of the session errors the ingress maps to HTTP answers (``serve_apps.api.backend_error``)."""


class SessionNotFoundError(SessionError):
    """No such session for this API key: never opened, closed, expired, or another key's (404)."""


class SessionLimitError(SessionError):
    """The replica holds ``max_sessions_per_replica`` sessions (429)."""


class FrameRateError(SessionError):
    """More than ``max_session_fps`` frames in the last second (429)."""


class FrameError(SessionError):
    """A frame that cannot be pushed: undecodable image (422) or a bad timestamp (400, ``FrameTimestampError``)."""


class FrameTimestampError(FrameError):
    """A timestamp that is not finite, negative or earlier than the previous frame's (400)."""


class SessionStateError(SessionError):
    """The session cannot answer yet: no keyframe, or no point heads for a reconstruction (409)."""


class SessionMovedError(SessionError):
    """Another replica took the session over from its snapshot; this copy was dropped (503, retry)."""


def owner_of(api_key: str | None) -> str:
    """The owner stored with a session: the SHA-256 of the API key that opened it ("" on an open server)."""
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else ""


@dataclass
class SessionRecord:
    """What the service keeps about a session beside its ``LiveSession`` (``session.json``).

    Attributes:
        id: the session id (``sess_<hex>``).
        owner: ``owner_of`` the API key that opened it.
        created: Unix time of the open.
        ttl_s: idle time after which the session expires.
        last_active: Unix time of its last request (as of the last write when read from storage).
        epoch: how many times a replica loaded the session (1 at open; +1 per takeover).
        snapshot_frames: frames pushed when the stored snapshot was taken.
        duration_s: the stream's length as the client last declared it (None: the session's own).
    """

    id: str
    owner: str
    created: float
    ttl_s: float
    last_active: float
    epoch: int = 1
    snapshot_frames: int = 0
    duration_s: float | None = None

    def expired(self, now: float) -> bool:
        return now - self.last_active > self.ttl_s


@dataclass
class HeldSession:
    """One session in a replica: the library session, its record, its recent push times and a lock
    that keeps its pushes in order."""

    record: SessionRecord
    live: LiveSession | None
    pushes: deque = field(default_factory=deque)  # monotonic times of the frames accepted in the window
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False

    def admit_frame(self, max_fps: float, now: float) -> None:
        """Counts one frame against ``max_fps`` over the last ``RATE_WINDOW_S``; ``FrameRateError`` past it."""
        while self.pushes and now - self.pushes[0] >= RATE_WINDOW_S:
            self.pushes.popleft()
        if len(self.pushes) >= max_fps * RATE_WINDOW_S:
            raise FrameRateError(
                f"session {self.record.id}: more than {max_fps:g} frames in the last {RATE_WINDOW_S:g} s "
                "(max_session_fps); retry later"
            )
        self.pushes.append(now)

    def info(self) -> dict:
        """The session as ``GET /v1/sessions/{id}`` shows it."""
        live, record = self.live, self.record
        return {
            "id": record.id,
            "object": "session",
            "created": int(record.created),
            "expires_at": int(record.last_active + record.ttl_s),
            "frames_pushed": live.num_pushed,
            "updates": live.num_updates,
            "keyframes": len(live.keyframes),
            "keyframe_indices": [k.frame_index for k in live.keyframes],
            "duration_s": self.duration_s(),
            "snapshot_frames": record.snapshot_frames,
            "memory_bytes": live.memory_bytes(),
            "policy": asdict(live.policy),
        }

    def duration_s(self) -> float:
        """The declared duration when the client gave one at least as long as the stream, else the session's."""
        declared, own = self.record.duration_s, self.live.duration_s
        return own if declared is None or declared < (self.live.last_timestamp_s or 0.0) else declared


def session_folder(storage_uri: str, session_id: str) -> str:
    return storage.join(storage_uri, "sessions", session_id)


def write_record(storage_uri: str, record: SessionRecord) -> None:
    storage.write_json(storage.join(session_folder(storage_uri, record.id), RECORD_NAME), asdict(record))


def read_record(storage_uri: str, session_id: str) -> SessionRecord | None:
    """The stored record, or None when the session has none (never opened here, or closed)."""
    uri = storage.join(session_folder(storage_uri, session_id), RECORD_NAME)
    if not storage.exists(uri):
        return None
    return SessionRecord(**storage.read_json(uri))


def write_snapshot(storage_uri: str, held: HeldSession) -> None:
    """The session's state, then its record naming how many frames the state holds (each write atomic)."""
    held.live.save(storage.join(session_folder(storage_uri, held.record.id), SNAPSHOT_NAME))
    held.record.snapshot_frames = held.live.num_pushed
    write_record(storage_uri, held.record)


def read_snapshot_uri(storage_uri: str, session_id: str) -> str:
    return storage.join(session_folder(storage_uri, session_id), SNAPSHOT_NAME)


def remove_session(storage_uri: str, session_id: str) -> None:
    """Deletes a session's record and snapshot (closed or expired sessions cannot be resumed)."""
    for name in (RECORD_NAME, SNAPSHOT_NAME):
        uri = storage.join(session_folder(storage_uri, session_id), name)
        if storage.exists(uri):
            storage.remove(uri)


def decode_frame(data: bytes, session_id: str) -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8 RGB (the ingress checked the format and size first)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=["JPEG", "PNG"]) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise FrameError(f"session {session_id}: the frame is not a decodable JPEG/PNG image ({e})") from None


def frame_timestamp(t: float | None, record: SessionRecord) -> float:
    """The frame's time in the stream: the client's ``t``, else seconds since the session opened."""
    value = time.time() - record.created if t is None else t
    if not math.isfinite(value) or value < 0:
        raise FrameTimestampError(f"t must be a finite number of seconds >= 0, got {value}")
    return value
