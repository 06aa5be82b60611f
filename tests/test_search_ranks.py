"""Multi-rank searches stay in step: a trial that raises on one rank scores `failed_score` on every rank
(the ranks agree through the one collective that carries the scores), is not cached, and the walk goes on."""

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from crdiff.experiment.config import RunConfig
from crdiff.experiment.distributed import Ranks
from crdiff.experiment.prompts import PromptSet
from crdiff.experiment.ratio_search import Objective
from crdiff.metrics.base import MeanScore
from crdiff.models import Resolution
from crdiff.search import SearchConfig, anneal

PROMPTS = PromptSet("four", ("a", "b", "c", "d"), ("0", "1", "2", "3"))
FAILING_CALL = 3  # the rank that fails raises at its third trial


class Brightness(MeanScore):
    def score(self, images, prompts):
        return torch.tensor([sum(im.convert("L").getdata()) / (255.0 * im.width * im.height) for im in images])


class Drawn(Objective):
    """The objective with images computed from the point instead of drawn by a pipeline; `fails` raises
    on this rank's FAILING_CALL-th trial."""

    fails: bool = False
    calls: int = 0

    def images(self, point, seed):
        self.calls += 1
        if self.fails and self.calls == FAILING_CALL:
            raise RuntimeError("CUDA out of memory")
        level = 0.5 if point is None else 1 - 2 * ((point["down"] - 0.45) ** 2 + (point["up"] - 0.6) ** 2)
        mine = self.ranks.shard(list(range(len(self.prompts))))
        return {res: [Image.new("RGB", (8, 8), (int(255 * level * (1 - 0.05 * i)),) * 3) for i in mine]
                for res in self.resolutions}


def objective(ranks: Ranks, failing_rank: int | None) -> Drawn:
    o = Drawn(None, PROMPTS, [Resolution(64, 64)], RunConfig(), Brightness(), None, ranks)
    o.fails = ranks.rank == failing_rank
    return o


def walk(state):
    return [(h["down"], h["mid"], h["up"], h["score"], h["failed"]) for h in state.history]


def _rank(rank, init, results):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    results[rank] = walk(anneal(objective(Ranks(rank, 2), failing_rank=1), SearchConfig(iterations=6)))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_a_trial_failing_on_one_rank_fails_on_both_and_they_stay_in_step(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(f"file://{tmp_path}/init", results), nprocs=2)
    single = walk(anneal(objective(Ranks(), failing_rank=0), SearchConfig(iterations=6)))
    assert results[0] == results[1] == single
    failed = [w for w in single if w[4]]
    assert len(failed) == 1 and failed[0][3] == -2.0 and single.index(failed[0]) == FAILING_CALL - 1
    clean = walk(anneal(objective(Ranks(), failing_rank=None), SearchConfig(iterations=6)))
    assert [w[:3] for w in clean[:FAILING_CALL - 1]] == [w[:3] for w in single[:FAILING_CALL - 1]]
