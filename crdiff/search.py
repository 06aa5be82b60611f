"""Simulated annealing over the block-wise ratios (paper §3.1, docs/method.md §2), pure and resumable.

`anneal(objective, config, state_path)` evaluates one trial at a time; after every trial the whole
state (iteration, temperature, current / best points, history, RNG state, trial cache) is written
atomically, so a killed search rerun with the same path continues on the identical trajectory.
All draws come from one `random.Random(seed)`: which variable moves (`choice`), by how much
(`uniform(-s, s)`), and the Metropolis test (`random()`), in that order.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crdiff.pruning import GROUPS
from crdiff import atomic

log = logging.getLogger(__name__)
Point = dict[str, float]


@dataclass
class SearchConfig:
    """REF's constants (docs/method.md §2) as defaults."""

    low: float = 0.1
    high: float = 0.8
    start: Point = field(default_factory=lambda: {g: 0.3 for g in GROUPS})
    iterations: int = 120
    t0: float = 0.1
    cooling: float = 0.95
    step: float = 0.10            # neighbour step s = max(min_step, step * T / T0)
    min_step: float = 0.005
    patience: int | None = None   # None: max(5, int(iterations * 0.2)) = 24
    reheat_threshold: float = 0.8  # reheats unlock once the best score has exceeded this
    reheat_factor: float = 1.5
    max_reheats: int = 3
    max_restarts: int = 2
    restart_step: float = 0.30
    failed_score: float = -2.0
    seed: int = 42
    variables: tuple[str, ...] = ("down", "mid", "up")
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
        if missing:
            raise ValueError(f"search.start lacks {missing}")

    def clip(self, name: str, value: float) -> float:
        low, high = self.bounds.get(name, (self.low, self.high))
        return min(high, max(low, value))


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


def _key(point: Point) -> str:
    return json.dumps({k: round(v, 4) for k, v in sorted(point.items())})


def _neighbour(point: Point, step: float, cfg: SearchConfig, rng: random.Random) -> Point:
    name = rng.choice(cfg.variables)
    return {**point, name: cfg.clip(name, point[name] + rng.uniform(-step, step))}


def _evaluate(point: Point, objective: Callable[[Point], float], state: SearchState, cfg: SearchConfig,
              kind: str) -> float:
    """Cached by ratios to 4 dp; a failing objective scores `failed_score` and the search goes on."""
    key = _key(point)
    cached = key in state.cache
    if not cached:
        try:
            state.cache[key] = float(objective(point))
        except Exception as err:  # noqa: BLE001 - a broken trial must not end a long search
            log.warning("trial %s failed (%s: %s); scored %s", key, type(err).__name__, err, cfg.failed_score)
            state.cache[key] = cfg.failed_score
    score = state.cache[key]
    state.history.append({"iteration": state.iteration, "kind": kind, **point, "score": score,
                          "temperature": state.temperature, "cached": cached})
    return score


def anneal(objective: Callable[[Point], float], cfg: SearchConfig, state_path: str | Path | None = None,
           on_trial: Callable[[SearchState], None] = lambda s: None, save: bool = True) -> SearchState:
    """Run (or resume) the search; returns the final state with `best` and `best_score`.

    Every rank resumes from `state_path`; only the one with `save=True` writes it."""
    path = Path(state_path) if state_path else None
    if path and path.exists():
        state = SearchState.load(path)
    else:
        state = SearchState(temperature=cfg.t0, current=dict(cfg.start))
    rng = random.Random(cfg.seed)
    if state.rng is not None:
        rng.setstate((state.rng[0], tuple(state.rng[1]), state.rng[2]))

    def checkpoint() -> None:
        state.rng = list(rng.getstate())
        if path and save:
            state.save(path)
        on_trial(state)

    if state.current_score is None:  # the start point
        state.current_score = _evaluate(state.current, objective, state, cfg, "start")
        state.best, state.best_score = dict(state.current), state.current_score
        checkpoint()
    while not state.done and state.iteration < cfg.iterations:
        step = max(cfg.min_step, cfg.step * state.temperature / cfg.t0)
        candidate = _neighbour(state.current, step, cfg, rng)
        score = _evaluate(candidate, objective, state, cfg, "move")
        delta = score - state.current_score
        if delta > 0 or rng.random() < math.exp(delta / state.temperature):  # Metropolis
            state.current, state.current_score = candidate, score
        if score > state.best_score:
            state.best, state.best_score, state.stall = dict(candidate), score, 0
        else:
            state.stall += 1
        state.iteration += 1
        state.temperature *= cfg.cooling
        if state.stall >= cfg.patience:
            _escape(objective, cfg, state, rng)
        checkpoint()
    state.done = True
    checkpoint()
    return state


def _escape(objective, cfg: SearchConfig, state: SearchState, rng: random.Random) -> None:
    """Patience ran out: reheat once the best score passed the threshold, else restart, else stop."""
    state.stall = 0
    if state.best_score > cfg.reheat_threshold and state.reheats < cfg.max_reheats:
        state.temperature *= cfg.reheat_factor
        state.reheats += 1
    elif state.restarts < cfg.max_restarts:
        state.restarts += 1
        state.current = _neighbour(state.best, cfg.restart_step, cfg, rng)
        state.current_score = _evaluate(state.current, objective, state, cfg, "restart")
        if state.current_score > state.best_score:
            state.best, state.best_score = dict(state.current), state.current_score
        state.temperature = cfg.t0
    else:
        state.done = True
