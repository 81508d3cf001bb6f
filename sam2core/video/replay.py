"""Bounded-mode replay: what the official predictor's store would hold for a click on an already tracked frame.

Bounded mode (``keep_history=False``) keeps only what later frames of a pass can read, so a correction on a tracked
frame finds neither that frame's tracked mask nor the memory window the official predictor would attend to there.
``Replay`` rebuilds both by re-tracking the objects tracked on that frame, on scratch copies and without yielding,
along the recorded passes (``propagation.Pass``) up to that frame: a backward frame also replays the first frames of
the forward pass from the same start that the backward pass read. The rebuilt stores are cached for further clicks
on the same frame until the next propagation.
"""

from __future__ import annotations

from .memory import MemoryParams, frames_to_keep
from .prompts import PromptError
from .propagation import Pass, Propagator, mirror_frames
from .state import BACKWARD, FORWARD, ObjectState, SessionState


def replay_runs(passes: list[Pass], frame_idx: int, reverse: bool, hold: set[int], num_frames: int,
                params: MemoryParams) -> list[Pass]:
    """The parts of the recorded ``passes`` that produced ``hold`` (a frame and its window), in order.

    The window of a backward frame lies in the backward pass and the first frames of the forward pass before it
    (which the backward pass also reads); that of a forward frame in the forward pass and, near its start, in a
    later backward pass from the same start. Each pass is cut where nothing further is needed.
    """
    forward = passes[0] if passes and not passes[0].reverse else None
    backward = next((p for p in reversed(passes) if p.reverse and
                     (frame_idx in p.frames if reverse else hold & set(p.frames))), None)
    if (backward if reverse else forward) is None:
        raise PromptError(f"frame {frame_idx}: no record of how the frame was tracked")
    runs: list[Pass] = []
    paired = forward is not None and backward is not None and forward.start == backward.start
    if forward is not None and (paired or not reverse):
        last = frame_idx if not reverse else forward.start
        if paired:
            mirror_ptr, mirror_mem = mirror_frames(forward.start, num_frames, params)
            last = max(last, *mirror_ptr, *mirror_mem)
        runs.append(Pass(False, forward.start, [t for t in forward.frames if t <= last]))
    if backward is not None:
        first = frame_idx if reverse else min(hold & set(backward.frames))
        runs.append(Pass(True, backward.start, [t for t in backward.frames if t >= first]))
    return runs


class Replay:
    """Replayed stores for prompts on tracked frames of one video's session, cached for the latest such frame."""

    def __init__(self, state: SessionState, propagator: Propagator) -> None:
        self._state = state
        self._propagator = propagator
        self._window: tuple[int, dict[int, ObjectState]] | None = None

    def clear(self) -> None:
        """Forget the cached stores (a propagation changes what a replay would rebuild)."""
        self._window = None

    def nbytes(self) -> int:
        """Bytes of tensors in the cached replayed tracking stores."""
        if self._window is None:
            return 0
        return sum(out.nbytes() for store in self._window[1].values() for out in store.non_cond.values())

    def stores(self, frame_idx: int) -> dict[int, ObjectState]:
        """obj_id -> a replayed store for every object tracked on ``frame_idx``, holding what the official
        predictor's store would hold for a prompt there (cached until the next propagation)."""
        if self._window is None or self._window[0] != frame_idx:
            stores: dict[int, ObjectState] = {}
            for mark in (FORWARD, BACKWARD):
                objects = [obj for obj in self._state.objects.values() if obj.tracked[frame_idx] == mark]
                if objects:
                    stores.update(self._replay(objects, frame_idx, mark == BACKWARD))
            self._window = (frame_idx, stores)
        return self._window[1]

    def _replay(self, objects: list[ObjectState], frame_idx: int, reverse: bool) -> dict[int, ObjectState]:
        """Re-track ``objects`` on scratch copies, nothing yielded, so that each holds what the official store holds
        for a prompt on ``frame_idx``: the memory window of that step and the frame's tracked output with its mask."""
        num_frames = self._state.num_frames
        params = self._propagator.tracker.params
        window_ptr, window_mem = frames_to_keep(frame_idx, reverse, num_frames, params)
        hold = window_ptr | window_mem | {frame_idx}
        scratch = [ObjectState(obj_id=obj.obj_id, cond=dict(obj.cond), tracked=bytearray(num_frames))
                   for obj in objects]
        stores = {obj.obj_id: obj for obj in scratch}
        for run in replay_runs(self._propagator.passes, frame_idx, reverse, hold, num_frames, params):
            for t, masks in self._propagator.track_frames(run.frames, run.reverse, run.start, scratch, hold):
                if t == frame_idx:  # its tracked output as computed then (a later pass may add to its window)
                    for obj_id, (low_res, _) in masks.items():
                        stores[obj_id].non_cond[t].low_res = low_res
        return stores
