"""crdiff.search walks REF's trajectory: a line-by-line port of REF's `BWP_strategy.py` loop (its trial
mocked by a function of the prompt and the ratios) against `anneal` on objectives that exercise every
branch: reheats (smooth, peak above 0.8), flat at 0.9 (never unlocked: 75 trials), rugged, never above
0.8, and failing prompts (scored -2.0 inside the mean, never cached)."""

import math
import random

import numpy as np
import pytest

from crdiff.search import SearchConfig, anneal

PROMPTS = ("hello_world", "text_future_is_now")


def ref_search(trial):
    """REF's main() for one model config; `trial(tag, params)` -> score or None stands for BWP_trial.sh.
    Returns (best score, best params, every evaluated (params, average) in order)."""
    rnd = random.Random(42)  # REF: random.seed(42) and the module's functions
    ITERATION_COUNT, PATIENCE_FACTOR = 120, 0.2
    PARAM_RANGES = {"down_ratio": (0.1, 0.8), "up_ratio": (0.1, 0.8), "mid_ratio": (0.1, 0.8)}
    REHEAT_UNLOCK_THRESHOLD, MAX_REHEATS_AFTER_THRESHOLD, MAX_RESTARTS = 0.8, 3, 2
    LARGE_MUTATION_FACTOR, INITIAL_TEMPERATURE, COOLING_RATE = 3.0, 0.1, 0.95
    INITIAL_NEIGHBOR_STEP_SIZE, MIN_NEIGHBOR_STEP_SIZE, REHEAT_FACTOR = 0.10, 0.005, 1.5
    SEED_SEARCH_STEPS = EVAL_STEPS = 30
    walked = []

    class ExperimentRunner:
        def __init__(self, tag):
            self.tag, self.cache = tag, {}

        def run_experiment(self, params, steps):
            param_key = f"m_{params['down_ratio']:.4f}_{params['up_ratio']:.4f}_{params['mid_ratio']:.4f}_{steps}"
            if param_key in self.cache:
                return self.cache[param_key], self.tag
            score = trial(self.tag, params)  # the subprocess: a float, or None when it failed
            if score is not None:
                self.cache[param_key] = score
            return score, self.tag

    def generate_neighbor(params, current_temperature, initial_temperature):
        param_to_change = rnd.choice(list(params.keys()))
        new_params = params.copy()
        dynamic_step_size = max(MIN_NEIGHBOR_STEP_SIZE,
                                INITIAL_NEIGHBOR_STEP_SIZE * (current_temperature / initial_temperature))
        perturbation = rnd.uniform(-dynamic_step_size, dynamic_step_size)
        new_params[param_to_change] += perturbation
        for param_key, (min_val, max_val) in PARAM_RANGES.items():
            new_params[param_key] = np.clip(new_params[param_key], min_val, max_val)
        return new_params

    def calculate_weighted_average(scores_dict):
        if not scores_dict:
            return -float("inf")
        return np.mean([-2.0 if score is None else score for score in scores_dict.values()])

    def evaluate_configuration(params, all_runners, steps):
        scores_dict = {}
        for runner in all_runners:
            score, tag = runner.run_experiment(params, steps)
            scores_dict[tag] = score
        avg_score = calculate_weighted_average(scores_dict)
        walked.append((dict(params), avg_score))
        return avg_score, scores_dict

    all_runners = [ExperimentRunner(tag) for tag in PROMPTS]
    patience = max(5, int(ITERATION_COUNT * PATIENCE_FACTOR))
    seed_params = {"down_ratio": 0.3, "up_ratio": 0.3, "mid_ratio": 0.3}
    seed_score, _ = evaluate_configuration(seed_params, all_runners, SEED_SEARCH_STEPS)
    current_solution, current_score = seed_params, seed_score
    overall_best_score, overall_best_solution = current_score, current_solution
    temperature, no_improvement_count, reheat_count = INITIAL_TEMPERATURE, 0, 0
    reheat_unlocked = False
    restarts_count = 0
    for i in range(ITERATION_COUNT):
        neighbor_solution = generate_neighbor(current_solution, temperature, INITIAL_TEMPERATURE)
        neighbor_score, _ = evaluate_configuration(neighbor_solution, all_runners, EVAL_STEPS)
        if neighbor_score <= -float("inf"):
            continue
        delta_score = neighbor_score - current_score
        if delta_score > 0 or rnd.random() < math.exp(delta_score / temperature):
            current_solution, current_score = neighbor_solution, neighbor_score
            if current_score > overall_best_score:
                overall_best_score, overall_best_solution = current_score, current_solution
                no_improvement_count = 0
                if not reheat_unlocked and overall_best_score > REHEAT_UNLOCK_THRESHOLD:
                    reheat_unlocked = True
            else:
                no_improvement_count += 1
        else:
            no_improvement_count += 1
        temperature *= COOLING_RATE
        if no_improvement_count >= patience:
            if reheat_unlocked and reheat_count < MAX_REHEATS_AFTER_THRESHOLD:
                reheat_count += 1
                temperature *= REHEAT_FACTOR
                no_improvement_count = 0
            elif restarts_count < MAX_RESTARTS:
                restarts_count += 1
                no_improvement_count = 0
                new_start_solution = generate_neighbor(overall_best_solution,
                                                       INITIAL_TEMPERATURE * LARGE_MUTATION_FACTOR, INITIAL_TEMPERATURE)
                new_start_score, _ = evaluate_configuration(new_start_solution, all_runners, SEED_SEARCH_STEPS)
                if new_start_score <= -float("inf"):
                    restarts_count -= 1
                    continue
                current_solution, current_score = new_start_solution, new_start_score
                temperature = INITIAL_TEMPERATURE
                if new_start_score > overall_best_score:
                    overall_best_score, overall_best_solution = new_start_score, new_start_solution
            else:
                break
    return overall_best_score, overall_best_solution, walked


# --- objectives: a score per (prompt, ratios); None is a failed trial of that prompt ---------------
def smooth(tag, p):
    """Peak 1.0 near (0.4, 0.25, 0.45); the start already scores above 0.8, which unlocks nothing in REF."""
    shift = 0.02 if tag == PROMPTS[1] else 0.0
    return 1.0 - 4 * ((p["down"] - 0.4) ** 2 + (p["mid"] - 0.25 - shift) ** 2 + (p["up"] - 0.45) ** 2)


def flat(tag, p):
    return 0.9


def rugged(tag, p):
    return 0.5 + 0.3 * math.sin(40 * p["down"]) * math.cos(31 * p["up"]) + 0.2 * math.sin(57 * p["mid"] + len(tag))


def low(tag, p):
    """Never above 0.8: no reheat, two restarts, stop."""
    return 0.6 - abs(p["mid"] - 0.7) - 0.5 * abs(p["up"] - 0.2)


def failing(tag, p):
    """The second prompt fails where down < 0.28 (e.g. out of memory): -2.0 inside the mean, not cached."""
    if tag == PROMPTS[1] and p["down"] < 0.28:
        return None
    return smooth(tag, p)


def as_ref(f):
    return lambda tag, params: f(tag, {g: float(params[f"{g}_ratio"]) for g in ("down", "mid", "up")})


def as_crdiff(f):
    return lambda point: [f(tag, point) for tag in PROMPTS]


@pytest.mark.parametrize("f", [smooth, flat, rugged, low, failing])
def test_anneal_walks_refs_trajectory(f):
    ref_best, ref_point, ref_walk = ref_search(as_ref(f))
    state = anneal(as_crdiff(f), SearchConfig())
    ours = [({g: h[g] for g in ("down", "mid", "up")}, h["score"]) for h in state.history]
    assert len(ours) == len(ref_walk)
    for (point, score), (params, avg) in zip(ours, ref_walk):
        assert score == pytest.approx(float(avg), abs=1e-9)
        assert all(point[g] == pytest.approx(float(params[f"{g}_ratio"]), abs=1e-9) for g in ("down", "mid", "up"))
    assert state.best_score == pytest.approx(float(ref_best), abs=1e-9)
    assert all(state.best[g] == pytest.approx(float(ref_point[f"{g}_ratio"]), abs=1e-9) for g in ("down", "mid", "up"))


def test_the_objectives_reach_every_branch():
    """What the trajectories above cover (so the comparison is not vacuous)."""
    assert anneal(as_crdiff(smooth), SearchConfig()).reheats > 0
    flat_state = anneal(as_crdiff(flat), SearchConfig())
    assert len(flat_state.history) == 75 and flat_state.reheats == 0 and flat_state.restarts == 2
    assert anneal(as_crdiff(low), SearchConfig()).restarts == 2
    failed = [h for h in anneal(as_crdiff(failing), SearchConfig()).history if h["failed"]]
    assert failed and all(not h["cached"] for h in failed)
    assert any(h["score"] == pytest.approx((smooth(PROMPTS[0], h) - 2.0) / 2) for h in failed)
