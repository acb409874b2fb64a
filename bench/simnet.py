"""The flow-level network of ``bench/simulate.py``: transfers share upload and download links.

Every node has an upload and a download capacity (bytes/s); a transfer is a *flow* from
its sender's uplink to its receiver's downlink, and the core in between never limits. The
rates are an approximate max-min fair share, recomputed for all flows at once (numpy) at
each tick of the simulation's clock when the set of flows changed:

1. every flow starts at its bottleneck share ``min(up_s / n_up_s, down_r / n_down_r)``;
2. then, ``rounds`` times, each link hands the capacity that its flows limited elsewhere
   leave unused to the flows it limits (the water level of that link), on the uplinks and
   then on the downlinks; that is the fixed point of max-min fairness when it converges
   (each flow crosses exactly two links, so it does in a few rounds);
3. finally every link whose flows would exceed it is scaled down to its capacity, so the
   rates are always feasible.

Rates stay constant between ticks; a flow that ends inside a tick ends at its exact time
(``remaining / rate``), and the share it frees goes to the others from the next tick on.

A flow carries *segments* one after the other (the chunks of one HTTP response for a run of
chunks): :meth:`FlowNetwork.step` reports each segment that ended, and the caller either
continues the flow with the next segment (:meth:`FlowNetwork.cont`, which keeps its rate and
credits it the bytes it sent after the end inside that tick) or removes it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def allocate(src: Ints, dst: Ints, up: Floats, down: Floats, rounds: int = 3) -> Floats:
    """Approximate max-min fair rates of flows ``src[i] → dst[i]`` (see the module doc)."""
    m = len(up)
    if len(src) == 0:
        return np.zeros(0)
    n_up = np.bincount(src, minlength=m).astype(np.float64)
    n_down = np.bincount(dst, minlength=m).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        share_up = np.where(n_up > 0, up / np.maximum(n_up, 1.0), np.inf)
        share_down = np.where(n_down > 0, down / np.maximum(n_down, 1.0), np.inf)
        for _ in range(rounds):
            share_up = _water_level(src, share_down[dst], share_up[src], up, m)
            share_down = _water_level(dst, share_up[src], share_down[dst], down, m)
    rate = np.minimum(share_up[src], share_down[dst])
    for node, cap in ((src, up), (dst, down)):
        used = np.bincount(node, weights=rate, minlength=m)
        scale = np.where(used > cap, cap / np.maximum(used, 1e-300), 1.0)
        rate = rate * scale[node]
    return rate


def _water_level(node: Ints, other: Floats, mine: Floats, cap: Floats, m: int) -> Floats:
    """A link's fair share once its flows limited by their other link (``other < mine``)
    keep only what that link gives them; ``inf`` where all of its flows are limited
    elsewhere."""
    elsewhere = other < mine
    used = np.bincount(node, weights=np.where(elsewhere, other, 0.0), minlength=m)
    count = np.bincount(node, weights=(~elsewhere).astype(np.float64), minlength=m)
    level = np.where(count > 0, np.maximum(cap - used, 0.0) / np.maximum(count, 1.0), np.inf)
    return level


class FlowNetwork:
    """Flows in numpy arrays (slots reused), advanced tick by tick."""

    def __init__(self, up: Floats, down: Floats, rounds: int = 3) -> None:
        self.up, self.down, self.rounds = up, down, rounds
        size = 1024
        self.src = np.zeros(size, dtype=np.int64)
        self.dst = np.zeros(size, dtype=np.int64)
        self.remaining = np.zeros(size)
        self.rate = np.zeros(size)
        self.active = np.zeros(size, dtype=bool)
        self._free = list(range(size - 1, -1, -1))
        self._dirty = False
        self.uploaded = np.zeros(len(up))
        """Bytes each node has sent (cancelled flows' bytes included)."""
        self.flows = 0

    def add(self, src: int, dst: int, nbytes: float) -> int:
        if not self._free:
            self._grow()
        fid = self._free.pop()
        self.src[fid], self.dst[fid], self.remaining[fid] = src, dst, max(nbytes, 1.0)
        self.rate[fid] = 0.0
        self.active[fid] = True
        self._dirty = True
        self.flows += 1
        return fid

    def remove(self, fid: int) -> None:
        if self.active[fid]:
            self.active[fid] = False
            self.rate[fid] = 0.0
            self._free.append(fid)
            self._dirty = True
            self.flows -= 1

    def _grow(self) -> None:
        old = len(self.src)
        for name in ("src", "dst", "remaining", "rate", "active"):
            arr = getattr(self, name)
            bigger = np.zeros(old * 2, dtype=arr.dtype)
            bigger[:old] = arr
            setattr(self, name, bigger)
        self._free.extend(range(old * 2 - 1, old - 1, -1))

    def cont(self, fid: int, nbytes: float, ended_at: float, t_end: float) -> float | None:
        """Continue flow ``fid``, whose segment ended at ``ended_at``, with a segment of
        ``nbytes``; what it sends from ``ended_at`` to ``t_end`` (the end of the tick) counts.
        Returns the end time of the new segment if it ends within the tick too (then it
        must be continued or removed again), else ``None``."""
        rate = float(self.rate[fid])
        window = rate * max(0.0, t_end - ended_at)
        src = self.src[fid]
        if rate > 0 and nbytes <= window:
            self.remaining[fid] = 0.0
            self.uploaded[src] += nbytes
            return ended_at + nbytes / rate
        self.remaining[fid] = nbytes - window
        self.uploaded[src] += window
        return None

    def step(self, t: float, dt: float) -> list[tuple[int, float]]:
        """Advance from ``t`` to ``t + dt``; returns the flows whose segment ended, with its
        end time: each must be continued (:meth:`cont`) or removed before the next step."""
        if not self.flows:
            return []
        idx = np.flatnonzero(self.active)
        if self._dirty:
            self.rate[idx] = allocate(self.src[idx], self.dst[idx], self.up, self.down, self.rounds)
            self._dirty = False
        rate, rem = self.rate[idx], self.remaining[idx]
        sent = np.minimum(rem, rate * dt)
        self.uploaded += np.bincount(self.src[idx], weights=sent, minlength=len(self.up))
        self.remaining[idx] = rem - sent
        hit = rem <= rate * dt
        if not hit.any():
            return []
        done, rem_done, rate_done = idx[hit], rem[hit], rate[hit]
        ends = t + np.where(rate_done > 0, rem_done / np.maximum(rate_done, 1e-300), dt)
        return list(zip(done.tolist(), ends.tolist(), strict=True))
