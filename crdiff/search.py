"""Simulated annealing over the block-wise ratios (paper §3.1, docs/method.md §2): REF's loop, pure and resumable.

`anneal(objective, config, state_path)` walks the points REF's `BWP_strategy.py` walks, in the same order,
with the same scores: one `random.Random(seed)` draws which variable moves (`choice` over REF's order
down, up, mid), by how much (`uniform(-s, s)`), and the Metropolis test (`random()`, only when the score
did not rise). After every iteration the whole state (temperature, current / best points, counters,
history, RNG state, trial cache) is written atomically, so a killed search rerun with the same path
continues on the identical trajectory.

An objective returns one score per prompt (None: that prompt failed) or one float; REF scores a failed
prompt -2.0 inside the trial's mean and does not cache a trial with a failure. An objective that raises
fails every prompt of the trial.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crdiff import atomic

log = logging.getLogger(__name__)
Point = dict[str, float]
Scores = float | Sequence[float | None]
REF_ORDER = ("down", "up", "mid")  # REF's dict order (down_ratio, up_ratio, mid_ratio): `choice` index 1 is up


@dataclass
class SearchConfig:
    """REF's constants (docs/method.md §2) as defaults."""

    low: float = 0.1
    high: float = 0.8
    start: Point = field(default_factory=lambda: {g: 0.3 for g in REF_ORDER})
    iterations: int = 120
    t0: float = 0.1
    cooling: float = 0.95
    step: float = 0.10            # neighbour step s = max(min_step, step * (T / t0)), REF's expression
    min_step: float = 0.005
    patience: int | None = None   # None: max(5, int(iterations * 0.2)) = 24
    reheat_threshold: float = 0.8  # a main-loop move setting a new best above this unlocks the reheats
    reheat_factor: float = 1.5
    max_reheats: int = 3
    max_restarts: int = 2
    restart_factor: float = 3.0   # a restart moves from the best at temperature t0 * 3.0: s = 0.10 * (0.3 / 0.1)
    failed_score: float = -2.0
    seed: int = 42
    variables: tuple[str, ...] = REF_ORDER  # the order `choice` draws from: it decides the walk
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # per-variable override, e.g. k

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high < 1:
            raise ValueError(f"search bounds [{self.low}, {self.high}] must satisfy 0 <= low < high < 1")
        if self.iterations < 1 or not 0 < self.cooling <= 1 or self.t0 <= 0:
            raise ValueError("search needs iterations >= 1, 0 < cooling <= 1 and t0 > 0")
        if self.patience is None:
            self.patience = max(5, int(self.iterations * 0.2))
        self.variables = tuple(self.variables)
        missing = [v for v in self.variables if v not in self.start]
        extra = [v for v in self.start if v not in self.variables]
        if missing or extra:
            raise ValueError(f"search.start must name exactly the variables {list(self.variables)}; "
                             f"missing {missing}, unknown {extra}")

    def clip(self, name: str, value: float) -> float:
        low, high = self.bounds.get(name, (self.low, self.high))
        return min(high, max(low, value))

    def step_at(self, temperature: float) -> float:
        return max(self.min_step, self.step * (temperature / self.t0))


@dataclass
class SearchState:
    iteration: int = 0
    temperature: float = 0.0
    current: Point = field(default_factory=dict)
    current_score: float | None = None
    best: Point = field(default_factory=dict)
    best_score: float = -math.inf
    stall: int = 0
    reheats: int = 0
    reheat_unlocked: bool = False
    restarts: int = 0
    done: bool = False
    rng: list | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, float] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        atomic.write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> SearchState:
        return cls(**json.loads(Path(path).read_text()))


def _key(point: Point, cfg: SearchConfig) -> str:
    """REF's cache key: every variable formatted to 4 decimals."""
    return "_".join(f"{point[v]:.4f}" for v in cfg.variables)


def _neighbour(point: Point, step: float, cfg: SearchConfig, rng: random.Random) -> Point:
    """One variable moved by U(-step, step); then every variable clipped to its bounds (as REF)."""
    name = rng.choice(cfg.variables)
    moved = {v: point[v] for v in cfg.variables}
    moved[name] += rng.uniform(-step, step)
    return {v: cfg.clip(v, moved[v]) for v in cfg.variables}


def trial_mean(scores: Scores | None, failed_score: float) -> tuple[float, bool]:
    """(mean score, whether a prompt failed): REF's mean with `failed_score` for each failed prompt."""
    if scores is None:
        return failed_score, True
    if not isinstance(scores, Sequence):
        return float(scores), False
    if not scores:
        raise ValueError("the search objective returned no score")
    failed = any(s is None for s in scores)
    return float(np.mean([failed_score if s is None else s for s in scores])), failed


def _evaluate(point: Point, objective: Callable[[Point], Scores], state: SearchState, cfg: SearchConfig,
              kind: str) -> float:
    """Cached by the point to 4 decimals; a trial with a failed prompt is neither cached nor fatal."""
    key = _key(point, cfg)
    cached = key in state.cache
    failed = False
    if cached:
        score = state.cache[key]
    else:
        try:
            scores = objective(point)
        except Exception as err:  # noqa: BLE001 - a broken trial must not end a long search
            log.warning("trial %s failed (%s: %s); scored %s", key, type(err).__name__, err, cfg.failed_score)
            scores = None
        score, failed = trial_mean(scores, cfg.failed_score)
        if not failed:
            state.cache[key] = score
    state.history.append({"iteration": state.iteration, "kind": kind, **point, "score": score,
                          "temperature": state.temperature, "cached": cached, "failed": failed})
    return score


def anneal(objective: Callable[[Point], Scores], cfg: SearchConfig, state_path: str | Path | None = None,
           on_trial: Callable[[SearchState], None] = lambda s: None, save: bool = True) -> SearchState:
    """Run (or resume) the search; returns the final state with `best` and `best_score`.

    Every rank resumes from `state_path`; only the one with `save=True` writes it."""
    path = Path(state_path) if state_path else None
    if path and path.exists():
        state = SearchState.load(path)
    else:
        state = SearchState(temperature=cfg.t0, current={v: cfg.start[v] for v in cfg.variables})
    rng = random.Random(cfg.seed)
    if state.rng is not None:
        rng.setstate((state.rng[0], tuple(state.rng[1]), state.rng[2]))

    def checkpoint() -> None:
        state.rng = list(rng.getstate())
        if path and save:
            state.save(path)
        on_trial(state)

    if state.current_score is None:  # the start point (REF's one seed configuration)
        state.current_score = _evaluate(state.current, objective, state, cfg, "start")
        state.best, state.best_score = dict(state.current), state.current_score
        checkpoint()
    while not state.done and state.iteration < cfg.iterations:
        candidate = _neighbour(state.current, cfg.step_at(state.temperature), cfg, rng)
        score = _evaluate(candidate, objective, state, cfg, "move")
        state.iteration += 1
        if score == -math.inf:  # REF skips such an iteration: no cooling, no patience
            checkpoint()
            continue
        delta = score - state.current_score
        if delta > 0 or rng.random() < math.exp(delta / state.temperature):  # Metropolis
            state.current, state.current_score = candidate, score
            if score > state.best_score:
                state.best, state.best_score, state.stall = dict(candidate), score, 0
                # only here, never at the start or a restart (REF)
                state.reheat_unlocked |= score > cfg.reheat_threshold
            else:
                state.stall += 1
        else:
            state.stall += 1
        state.temperature *= cfg.cooling
        if state.stall >= cfg.patience:
            _escape(objective, cfg, state, rng)
        checkpoint()
    state.done = True
    checkpoint()
    return state


def _escape(objective, cfg: SearchConfig, state: SearchState, rng: random.Random) -> None:
    """Patience ran out: reheat once unlocked, else restart from a neighbour of the best, else stop."""
    if state.reheat_unlocked and state.reheats < cfg.max_reheats:
        state.reheats += 1
        state.temperature *= cfg.reheat_factor
        state.stall = 0
    elif state.restarts < cfg.max_restarts:
        state.restarts += 1
        state.stall = 0
        point = _neighbour(state.best, cfg.step_at(cfg.t0 * cfg.restart_factor), cfg, rng)
        score = _evaluate(point, objective, state, cfg, "restart")
        if score == -math.inf:  # REF: the restart does not count, the temperature stays
            state.restarts -= 1
            return
        state.current, state.current_score, state.temperature = point, score, cfg.t0
        if score > state.best_score:
            state.best, state.best_score = dict(point), score
    else:
        state.done = True
