"""Validated dataclasses, one per config group. `crdiff.run` builds them from Hydra; nothing else sees Hydra."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdiff.amplify import CRDiffConfig, validate_batched, validate_k, validate_weights
from crdiff.models import DTYPES, Resolution, load_pipeline, locate
from crdiff.pruning import CRITERIA, GROUPS, validate_ratios

SCHEDULERS = ("ddim", "euler", "euler_a", "dpmpp_2m", "pndm")
SETTINGS = ("default", "unseen", "beyond")  # resolution sets: training size, Tables A/B's unseen, Table C's larger


def _choice(what: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"{what} is {value!r}; valid choices: {sorted(choices)}")


@dataclass
class ModelConfig:
    """`name` is the registry entry and the label rows carry; `source` / `revision` (null: the
    registry's) say which weights load. Both join the run key: other weights, other images."""

    name: str = "tiny-sdxl"
    dtype: str = "fp32"
    source: str | None = None  # a hub id 'org/name' or a local folder in place of the registry's source
    revision: str | None = None  # hub branch, tag or commit
    # keep | drop the pipeline's safety checker (SD1.5 ships one; SDXL, SD2.1 none): keep blackens the
    # images it flags, as the paper's SD1.5 numbers evidently include (docs/protocol.md)
    safety_checker: str = "drop"

    def __post_init__(self) -> None:
        _choice("model.dtype", self.dtype, DTYPES)
        _choice("model.safety_checker", self.safety_checker, ("keep", "drop"))
        self.weights()  # unknown names, a source given twice, sources gone from the hub

    def weights(self):
        """The `crdiff.weights.PipelineWeights` this config loads (source, revision, weight variant)."""
        return locate(self.name, self.source, self.revision, self.dtype)

    def load(self, device: str = "cpu"):
        return load_pipeline(self.name, self.dtype, device, source=self.source, revision=self.revision,
                             safety_checker=self.safety_checker)


@dataclass
class PruningConfig:
    """`blockwise`: one ratio per group (`ratios`); `uniform`: one `ratio` for all; `none`: nothing pruned."""

    kind: str = "blockwise"
    criterion: str = "magnitude"
    ratios: dict[str, float] | None = None  # blockwise; None: REF's search start, 0.3 per group
    ratio: float | None = None  # uniform
    seed: int = 0  # criterion random only
    targets: list[str] | None = None  # module-name suffixes to prune; null: docs/method.md §1 (UNet), §5 (DiT)
    model_kind: str | None = None  # "unet" | "dit": refuse a model of the other kind; null: either
    # criterion=wanda (and method wanda): the first n prompts of the run, `steps` dense steps at the
    # model's training resolution, give each layer's input-feature norms (crdiff.calibration)
    calibration_prompts: int = 8
    calibration_steps: int = 4
    # per resolution: the ratios of the preset searched_<model>_<HxW> if one is on preset_path, else
    # `ratios` (crdiff.experiment.presets); preset_path null: <output_dir>/presets/pruning, then conf/pruning
    searched: bool = False
    preset_path: list[str] | None = None
    # whose presets pruning.searched takes: the search experiment whose protocol (and preset-name prefix) a
    # preset must have (crdiff.experiment.presets.PROTOCOLS): search (REF's), scenes_search, scenes_search30
    search_protocol: str = "search"
    # written by the search into its preset: what produced the ratios and how they did against the start
    # (crdiff.experiment.presets); `pruning.searched` checks them, pruning itself never reads them
    objective: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _choice("pruning.kind", self.kind, ("blockwise", "uniform", "none"))
        from crdiff.experiment.presets import PROTOCOLS

        _choice("pruning.search_protocol", self.search_protocol, tuple(PROTOCOLS))
        if self.searched and self.kind != "blockwise":
            raise ValueError(f"pruning.searched takes block-wise presets; pruning.kind is {self.kind!r}")
        _choice("pruning.criterion", self.criterion, CRITERIA)
        if self.model_kind is not None:
            _choice("pruning.model_kind", self.model_kind, ("unet", "dit"))
        for name in ("calibration_prompts", "calibration_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"pruning.{name} is {value!r}; it must be a positive integer")
        if self.kind != "uniform" and self.ratio is not None:
            raise ValueError(f"pruning.ratio is set but pruning.kind={self.kind} does not read it (use pruning=uniform)")
        derived = {"uniform": {g: self.ratio for g in GROUPS}, "none": {g: 0.0 for g in GROUPS}}.get(self.kind)
        if self.kind == "uniform" and self.ratio is None:
            raise ValueError("pruning.kind=uniform needs pruning.ratio in [0, 1)")
        if derived is not None and self.ratios is not None and validate_ratios(self.ratios) != derived:
            raise ValueError(f"pruning.ratios is set but pruning.kind={self.kind} ignores it (it prunes "
                             f"{derived}); drop pruning.ratios or use pruning=blockwise")
        self.ratios = validate_ratios(derived or self.ratios or {g: 0.3 for g in GROUPS})

    def check_model(self, denoiser) -> None:
        """Refuse a model of the kind this pruning was not written for (e.g. pruning=dit on a UNet)."""
        from crdiff.pruning import is_dit

        kind = "dit" if is_dit(denoiser) else "unet"
        if self.model_kind not in (None, kind):
            raise ValueError(f"pruning.model_kind is {self.model_kind!r} but the model's denoiser is a {kind} "
                             f"({type(denoiser).__name__}); use pruning={'dit' if kind == 'dit' else 'blockwise'}")


@dataclass
class AmplifyConfig:
    k: float = 1.5
    # true: dense and pruned in one call | false: one after the other | auto: batched unless CUDA memory is
    # short (crdiff.memory); speed and memory only: not part of the run key; each image records what ran
    batched: Any = True
    weights: str = "auto"  # on_the_fly | cached | auto: how pruned weights are held (speed/memory only)
    memory_budget_gib: float | None = None  # weights=auto: GiB the cache may take; null: free memory - 25%

    def __post_init__(self) -> None:
        self.k = validate_k(self.k)
        validate_batched(self.batched)
        validate_weights(self.weights, self.memory_budget_gib)


@dataclass
class PromptsConfig:
    kind: str = "builtin"
    path: str | None = None
    limit: int | None = None
    texts: list[str] = field(default_factory=list)  # kind=list: the user's own prompts


@dataclass
class SamplerConfig:
    scheduler: str | None = None  # None: the pipeline's own default (as REF)
    steps: int = 30
    guidance: float = 7.5
    negative_prompt: str | None = ""  # None: no negative prompt (REF's CR-Diff script); not the same as ""
    seed: int = 0
    batch_size: int = 4  # speed only: not part of the run key

    def __post_init__(self) -> None:
        if self.scheduler is not None:
            _choice("sampler.scheduler", self.scheduler, SCHEDULERS)
        for name in ("steps", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"sampler.{name} is {getattr(self, name)!r}; it must be a positive integer")
        if not math.isfinite(self.guidance):
            raise ValueError(f"sampler.guidance is {self.guidance}; it must be finite")


@dataclass
class ResolutionsConfig:
    """The model's training (`default`), the paper's `unseen` resolutions and the larger ones `beyond` the
    paper's tables (Table C), HxW; `sets` picks which run."""

    default: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)
    beyond: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=lambda: ["default", "unseen"])

    def __post_init__(self) -> None:
        for s in self.sets:
            _choice("resolutions.sets entry", s, SETTINGS)
        for text in self.default + self.unseen + self.beyond:
            Resolution.parse(text)
        if not self.selected():
            raise ValueError(f"no resolution selected: resolutions.sets={self.sets} with default={self.default}, "
                             f"unseen={self.unseen}")

    def selected(self) -> list[tuple[str, Resolution]]:
        """(setting, resolution) pairs in order, e.g. ('unseen', 400x560)."""
        return [(s, Resolution.parse(t)) for s in self.sets for t in getattr(self, s)]


@dataclass
class WandbConfig:
    mode: str = "disabled"
    project: str = "crdiff"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _choice("wandb.mode", self.mode, ("online", "offline", "disabled"))


@dataclass
class MetricsConfig:
    """Which metrics score each (method, resolution); `tiny` swaps in offline stand-ins of the real classes."""

    names: list[str] = field(default_factory=list)
    tiny: bool = False
    preprocessing: str = "stretch256"
    batch_size: int = 32
    kid_subset_size: int = 1000
    clip_arch: str = "ViT-L-14"
    clip_pretrained: str = "openai"
    # 95% intervals over prompts (crdiff.metrics.intervals): bootstrap resamples of per-image means; groups
    # of the delete-a-group jackknife of FID / KID (each group one recomputation of the distance: seconds
    # at 5,000 images on a CPU); their seed
    resamples: int = 1000
    feature_groups: int = 20
    interval_seed: int = 0

    def __post_init__(self) -> None:
        from crdiff.metrics import METRICS, PREPROCESSING

        for name in self.names:
            _choice("metrics.names entry", name, METRICS)
        _choice("metrics.preprocessing", self.preprocessing, PREPROCESSING)
        if self.batch_size < 1:
            raise ValueError(f"metrics.batch_size is {self.batch_size}; it must be a positive integer")
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or self.resamples < 0:
            raise ValueError(f"metrics.resamples is {self.resamples!r}; it must be a whole number >= 0 (0: no interval)")
        groups = self.feature_groups
        if isinstance(groups, bool) or not isinstance(groups, int) or groups == 1 or groups < 0:
            raise ValueError(f"metrics.feature_groups is {groups!r}; it must be 0 (no interval) or a whole number "
                             ">= 2 (the jackknife's groups, at most one per prompt)")

    @property
    def needs_reference(self) -> bool:
        from crdiff.metrics import REFERENCE_METRICS

        return any(n in REFERENCE_METRICS for n in self.names)


@dataclass
class RatioSearchConfig:
    """The ratio search (docs/method.md §2): annealing constants, objective, what to search, where the preset goes."""

    anneal: dict[str, Any] = field(default_factory=dict)  # overrides of crdiff.search.SearchConfig
    metric: str = "image_reward"
    resolutions: list[str] = field(default_factory=list)  # one joint search; empty: one search per resolution
    search_k: bool = False  # prompt-specific refinement searches k too (preset refined_<model>_<HxW>)
    k_bounds: tuple[float, float] = (1.0, 3.0)
    preset_root: str | None = None  # a Hydra config root; None: <output_dir>/presets (on the search path)
    preset_name: str | None = None  # None: searched_<model>_<HxW> (refined_... with search_k)
    compare: bool = False  # save dense vs refined images side by side with their scores
    validation_seeds: int = 8  # after the search, best vs start on this many held-out seeds per prompt; 0: none

    def __post_init__(self) -> None:
        from crdiff.metrics import METRICS, REFERENCE_METRICS

        _choice("search.metric", self.metric, METRICS)
        if self.metric in REFERENCE_METRICS:
            raise ValueError("search.metric must be a per-image score (clip, image_reward, pickscore, aesthetic, "
                             "digit_accuracy)")
        for text in self.resolutions:
            Resolution.parse(text)
        if isinstance(self.validation_seeds, bool) or not isinstance(self.validation_seeds, int) \
                or self.validation_seeds < 0:
            raise ValueError(f"search.validation_seeds is {self.validation_seeds!r}; it must be an integer >= 0")
        self.settings()  # validates the constants

    def settings(self):
        from crdiff.search import REF_ORDER, SearchConfig

        variables = (*REF_ORDER, "k") if self.search_k else REF_ORDER  # REF's order decides the walk
        anneal = dict(self.anneal)
        if self.search_k:
            anneal.setdefault("start", {"down": 0.3, "up": 0.3, "mid": 0.3, "k": 1.5})
        return SearchConfig(**anneal, variables=variables, bounds={"k": tuple(self.k_bounds)})


@dataclass
class BaselinesConfig:
    """Settings of the comparison methods (see crdiff.methods)."""

    freeu: list[float] | None = None  # [s1, s2, b1, b2]; None: the published values for the model
    uniform_ratio: float | None = None  # None: CR-Diff's total sparsity (methods/pruned.py, Uniform)
    # native_resize draws at: `bucket` the trained size closest in aspect (SDXL's published buckets, else the
    # training area); `train` the training resolution for every target (crop for other aspects)
    native_size: str = "bucket"

    def __post_init__(self) -> None:
        _choice("baselines.native_size", self.native_size, ("bucket", "train"))
        if self.freeu is not None and len(self.freeu) != 4:
            raise ValueError(f"baselines.freeu is {self.freeu}; it needs [s1, s2, b1, b2]")
        if self.uniform_ratio is not None:
            validate_ratios({g: self.uniform_ratio for g in GROUPS})




@dataclass
class RunConfig:
    """Everything one `python -m crdiff.run` job needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    amplify: AmplifyConfig = field(default_factory=AmplifyConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    resolutions: ResolutionsConfig = field(default_factory=lambda: ResolutionsConfig(default=["64x64"]))
    wandb: WandbConfig = field(default_factory=WandbConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    search: RatioSearchConfig = field(default_factory=RatioSearchConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    task: str = "generate"  # generate (dense vs methods) | search (ratios by simulated annealing) | plan (print the jobs)
    methods: list[str] = field(default_factory=lambda: ["dense", "crdiff"])
    # methods left out (task=plan and the log say why) on a model they do not support; any other is refused
    methods_if_supported: list[str] = field(default_factory=list)
    experiment: str = "default"
    output_dir: str = "outputs"
    device: str = "auto"
    lease_min: float = 10.0  # a claim on an image expires this long after its holder last renewed it
    # whole | sliced | tiled | auto: how the VAE decodes; auto slices or tiles only on CUDA when the decode's
    # estimated memory exceeds free memory (crdiff.memory); each image records what ran; not in the run key
    vae_decode: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.lease_min, bool) or not isinstance(self.lease_min, (int, float)) or not self.lease_min > 0:
            raise ValueError(f"lease_min is {self.lease_min!r}; it must be a positive number of minutes")
        from crdiff.memory import VAE_DECODE

        _choice("vae_decode", self.vae_decode, VAE_DECODE)
        if not self.methods:
            raise ValueError("methods is empty; list at least one (dense, crdiff, ...)")
        from crdiff.experiment import methods

        for m in (*self.methods, *self.methods_if_supported):
            methods.get(self, m)  # an unknown name, a family member without its value
        _choice("task", self.task, ("generate", "search", "plan"))
        if self.task == "search" and self.pruning.criterion == "wanda":
            raise ValueError("the ratio search prunes by pruning.criterion at every trial; 'wanda' needs calibration "
                             "norms it does not take: use magnitude, magnitude_layerwise or random")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from a plain (resolved) dict, e.g. `OmegaConf.to_container(cfg, resolve=True)`."""
        groups = {"model": ModelConfig, "pruning": PruningConfig, "amplify": AmplifyConfig, "prompts": PromptsConfig,
                  "sampler": SamplerConfig, "resolutions": ResolutionsConfig, "wandb": WandbConfig,
                  "metrics": MetricsConfig, "search": RatioSearchConfig, "baselines": BaselinesConfig}
        known = set(cls.__dataclass_fields__)
        kwargs = {k: (groups[k](**v) if k in groups else v) for k, v in d.items() if k in known}
        return cls(**kwargs)

    def method(self, name: str, resolution: Resolution | None = None) -> CRDiffConfig | None:
        """The CR-Diff settings of a pruning-based method at `resolution` (None for dense and the others)."""
        from crdiff.experiment.methods import pruning_settings

        return pruning_settings(self, name, resolution)

    def check_output_dir(self) -> Path:
        """Create the output folder (or fail clearly) before any heavy work."""
        out = Path(self.output_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"output_dir {str(out)!r} cannot be created: {err.strerror}") from None
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"output_dir {str(out)!r} is not writable")
        return out
