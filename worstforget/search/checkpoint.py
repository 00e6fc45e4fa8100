"""The per-step checkpoint of one search: a small digested state file plus appended weight rows.

Kept apart from the loop that writes it so the file format (and its trust rules) lives in one place.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..core.cache import content_digest, file_lock, need
from ..core.io import write_bytes_atomic

STATE_VERSION = 2  # 2: a small state file plus appended weight rows (O(N) bytes per outer step)
LOGGER = logging.getLogger("worstforget")


class SearchCheckpoint:
    """The per-step checkpoint of one search: O(N) bytes written per outer step, whatever the step.

    `search-<key>.pt` (torch, weights only) holds the step, whether the search is done, the history, the
    elapsed seconds, the last gradient, one digest per weight row and a digest of all of it; the weights
    after every step go to `search-<key>.rows`, one float64 row of N values appended per step (row 0 = w₀).
    The rows file is written before the state that counts its rows, so a kill between the two leaves one
    row too many, which is dropped on resume. A checkpoint whose digests do not match, which is truncated
    or foreign, is never trusted: the search starts again from step 0 (one warning line).
    A stateful solver's state after the step (`solver_state`: the warm solver's model and optimiser) is
    part of the state file, under the same digest, so each step also writes the size of that state.
    """

    def __init__(self, folder: Path, key: str, num_vars: int, *, stateful: bool = False):
        self.state_path = folder / f"search-{key}.pt"
        self.rows_path = folder / f"search-{key}.rows"
        self.key, self.num_vars, self.stateful = key, num_vars, stateful
        self.row_digests: list[str] = []

    @property
    def row_bytes(self) -> int:
        return 8 * self.num_vars

    def lock(self):
        return file_lock(self.state_path.with_name(f"{self.state_path.name}.lock"))

    def load(self, outer_steps: int) -> dict | None:
        """The verified state, with `weights` (its rows as tensors), or None (absent or untrusted)."""
        need(self.state_path, self.rows_path)  # a worker without the driver's folder asks for both
        if not self.state_path.is_file():
            return None
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
            problem = self._problem(state, outer_steps)
        except Exception as exc:  # a truncated or foreign file: torch raises many types
            problem = f"is unreadable ({type(exc).__name__})"
        if problem is None:
            try:
                state["weights"] = self._read_rows(state["step"] + 1)
            except OSError as exc:
                problem = f"has unreadable weight rows ({exc.strerror or exc})"
        if problem is None and [content_digest(r) for r in state["weights"]] != state["row_digests"]:
            problem = "has damaged or missing weight rows"
        if problem is not None:
            LOGGER.warning("search checkpoint %s %s; starting the search from its first step", self.state_path,
                           problem)
            return None
        self.row_digests = list(state["row_digests"])
        return state

    def _problem(self, state, outer_steps: int) -> str | None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "digest" not in state:
            return "was written by another version"
        body = {k: v for k, v in state.items() if k != "digest"}
        if content_digest(body) != state["digest"]:
            return "fails its checksum (damaged)"
        if state["key"] != self.key:
            return "belongs to another search"
        step = state["step"]
        if not (isinstance(step, int) and 0 < step <= outer_steps and len(state["row_digests"]) == step + 1
                and tuple(state["last_grad"].shape) == (self.num_vars,)
                and (not self.stateful or isinstance(state.get("solver_state"), dict))):
            return "is inconsistent"
        return None

    def _read_rows(self, count: int) -> list[torch.Tensor]:
        with open(self.rows_path, "rb") as fh:
            data = fh.read(count * self.row_bytes)
        if len(data) != count * self.row_bytes:
            return []  # too short: fails the digest comparison
        arr = np.frombuffer(data, dtype=np.float64).reshape(count, self.num_vars)
        return [torch.from_numpy(row.copy()) for row in arr]

    def begin(self, weights: list[torch.Tensor]) -> None:
        """Make the rows file hold exactly `weights` (w₀ alone on a fresh start, the verified rows on resume)."""
        self.rows_path.parent.mkdir(parents=True, exist_ok=True)
        if len(weights) == 1:  # fresh: an older state must not outlive the rows it counted
            self.state_path.unlink(missing_ok=True)
            self.row_digests = []
            with open(self.rows_path, "wb") as fh:
                self._append(fh, weights[0])
        else:  # drop a row written by a step whose state was never saved
            os.truncate(self.rows_path, len(weights) * self.row_bytes)

    def save(self, w: torch.Tensor, *, step: int, done: bool, history: dict, seconds: float,
             last_grad: torch.Tensor, solver_state: dict | None = None) -> None:
        """Append the row of step `step` and replace the state (atomically), with the solver's own if it has one."""
        with open(self.rows_path, "r+b") as fh:
            fh.seek(step * self.row_bytes)
            self._append(fh, w)
        body = {"version": STATE_VERSION, "key": self.key, "step": step, "done": done, "history": history,
                "seconds": float(seconds), "last_grad": last_grad.double().cpu(), "row_digests": self.row_digests}
        if solver_state is not None:
            body["solver_state"] = solver_state
        buf = io.BytesIO()
        torch.save({**body, "digest": content_digest(body)}, buf)
        write_bytes_atomic(self.state_path, buf.getvalue())

    def _append(self, fh, w: torch.Tensor) -> None:
        row = w.detach().double().cpu().contiguous()
        fh.write(row.numpy().tobytes())
        fh.flush()
        os.fsync(fh.fileno())
        self.row_digests.append(content_digest(row))
