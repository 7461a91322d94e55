"""The Raptor zoo: one table from zoo names to Hub repos, teachers, schedules and the recipe that builds each.

Names (docs/design.md §6): ``raptor-dinov2-{small,base,large,giant}[-reg]-k{2,3,4}``, the frontier teachers of other
families (``raptor-dinov3-{small,small-plus,base,large,huge-plus,7b}-k{2,3,4}``, ``raptor-eva02-...``,
``raptor-pe-core-...``, ``raptor-siglip-base-...``), Raptors of transformers teachers named after their repo
(``raptor-dinov3-vits16-pretrain-lvd1689m-k2``, ``raptor-clip-vit-base-patch16-k2``, ...), relaxed variants
``...-r{R}`` (rank-R per-step adapters; parsed, derived from their base entry, never published yet), the alias
``raptor-dinov2-k2`` (the paper's model, ``raptor-dinov2-base-reg-k2``) and the embedded ``raptor-digits-k2``
(package data, ``raptor_zoo/assets/raptor-digits-k2/``, loads offline).

* An unpublished entry raises :class:`ZooModelUnavailableError` before any network call, naming the repo id it
  would have (org ``raptor-zoo``) and the recipe command that builds it.
* ``RAPTOR_ZOO_HUB_ORG=<org>`` points every Hub-hosted entry at ``<org>/<name>`` and loads it through
  huggingface_hub (for Raptors you built and pushed yourself). Embedded entries are package data and keep
  loading from the package.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .models.archs import RAPTOR_ARCHS, RAPTOR_TIMM_ARCHS

__all__ = [
    "HUB_ORG",
    "HUB_ORG_ENV",
    "DISTILL_RECIPE",
    "ZOO",
    "ALIASES",
    "ZooEntry",
    "ZooModelUnavailableError",
    "is_zoo_name",
    "resolve",
    "locate",
    "entry_for_repo_id",
    "list_models",
]

HUB_ORG = "raptor-zoo"
"""Hub organisation of published zoo entries."""
HUB_ORG_ENV = "RAPTOR_ZOO_HUB_ORG"
"""Environment variable that redirects every Hub-hosted zoo entry to ``<org>/<name>``."""
DISTILL_RECIPE = "recipes/distill.py"

_DINOV2_SIZES = {"small": ("s", "vit_small"), "base": ("b", "vit_base"), "large": ("l", "vit_large"),
                 "giant": ("g", "vit_giant")}
_ZOO_NAME_RE = re.compile(r"^raptor-[a-z0-9]+(?:-[a-z0-9]+)*$")
_RELAXED_RE = re.compile(r"^(?P<base>raptor-.+-k\d+)-r(?P<rank>[1-9]\d*)$")


class ZooModelUnavailableError(FileNotFoundError):
    """A zoo model that cannot be loaded here: unpublished, or embedded weights missing from the package."""


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: where its weights live and how to build it."""

    name: str
    teacher: str
    k: int
    recipe_config: str
    schedule_source: str
    block_schedule: tuple[int, ...] | None = None
    published: bool = False
    embedded: bool = False
    relax_rank: int = 0
    architecture: str | None = None
    teacher_hub_id: str | None = None
    license: str | None = None
    datasets: tuple[str, ...] = ()
    recipe_args: tuple[str, ...] = ()

    def repo_id(self, org: str | None = None) -> str:
        """Hub repo id: ``<org>/<name>`` with org ``org``, else ``$RAPTOR_ZOO_HUB_ORG``, else ``raptor-zoo``."""
        return f"{org or os.environ.get(HUB_ORG_ENV) or HUB_ORG}/{self.name}"

    @property
    def recipe_command(self) -> str:
        """The command that distils this model locally."""
        command = " ".join(["accelerate", "launch", DISTILL_RECIPE, "--config", self.recipe_config, *self.recipe_args])
        return command + (f" --relax-rank {self.relax_rank}" if self.relax_rank else "")

    @property
    def asset_dir(self) -> Path | None:
        """Package folder of an embedded entry (it may not exist yet in a source checkout)."""
        if not self.embedded:
            return None
        return Path(str(resources.files("raptor_zoo.assets").joinpath(self.name)))

    @property
    def available_offline(self) -> bool:
        """Embedded weights present in the package, or the weights already in the local Hub cache."""
        if self.embedded:
            return (self.asset_dir / "model.safetensors").is_file()
        from huggingface_hub import try_to_load_from_cache

        return all(isinstance(try_to_load_from_cache(self.repo_id(), filename), str)
                   for filename in ("config.json", "model.safetensors"))


def _dinov2_entries() -> dict[str, ZooEntry]:
    entries = {}
    for size, (letter, prefix) in _DINOV2_SIZES.items():
        for reg in (False, True):
            teacher_arch = f"{prefix}_patch14{'_reg4' if reg else ''}_dinov2"
            for k in (2, 3, 4):
                name = f"raptor-dinov2-{size}{'-reg' if reg else ''}-k{k}"
                arch = f"raptor_{teacher_arch}_k{k}"
                spec = RAPTOR_ARCHS[arch]
                entries[name] = ZooEntry(
                    name=name,
                    teacher=f"{teacher_arch}.lvd142m",
                    k=k,
                    recipe_config=f"recipes/configs/dinov2_vit{letter}14{'_reg4' if reg else ''}_k{k}.yaml",
                    schedule_source=spec["schedule_source"],
                    block_schedule=tuple(spec["block_schedule"]),
                    architecture=arch,
                    teacher_hub_id=f"timm/{teacher_arch}.lvd142m",
                    license="apache-2.0",
                    datasets=("imagenet-1k",),
                )
    return entries


# frontier teachers of other families (models/raptor_timm.py): teacher arch -> (zoo stem, pretrained tag, license)
_FRONTIER_NAMES: dict[str, tuple[str, str, str]] = {
    "vit_small_patch16_dinov3": ("raptor-dinov3-small", "lvd1689m", "dinov3-license"),
    "vit_small_plus_patch16_dinov3": ("raptor-dinov3-small-plus", "lvd1689m", "dinov3-license"),
    "vit_base_patch16_dinov3": ("raptor-dinov3-base", "lvd1689m", "dinov3-license"),
    "vit_large_patch16_dinov3": ("raptor-dinov3-large", "lvd1689m", "dinov3-license"),
    "vit_huge_plus_patch16_dinov3": ("raptor-dinov3-huge-plus", "lvd1689m", "dinov3-license"),
    "vit_7b_patch16_dinov3": ("raptor-dinov3-7b", "lvd1689m", "dinov3-license"),
    "eva02_small_patch14_224": ("raptor-eva02-small", "mim_in22k", "mit"),
    "eva02_base_patch14_224": ("raptor-eva02-base", "mim_in22k", "mit"),
    "eva02_large_patch14_224": ("raptor-eva02-large", "mim_in22k", "mit"),
    "vit_pe_core_small_patch16_384": ("raptor-pe-core-small", "fb", "apache-2.0"),
    "vit_pe_core_base_patch16_224": ("raptor-pe-core-base", "fb", "apache-2.0"),
    "vit_pe_core_large_patch14_336": ("raptor-pe-core-large", "fb", "apache-2.0"),
    "vit_base_patch16_siglip_224": ("raptor-siglip-base", "v2_webli", "apache-2.0"),
}
# (teacher, k) with a config of their own; the others run the ViT-B config with teacher, size and schedule overridden
_FRONTIER_CONFIGS = {("vit_small_patch16_dinov3", 2): "recipes/configs/dinov3_vits16_k2.yaml",
                     ("vit_base_patch16_dinov3", 2): "recipes/configs/dinov3_vitb16_k2.yaml"}
_FRONTIER_BASE_CONFIG = "recipes/configs/dinov3_vitb16_k2.yaml"


def _frontier_entries() -> dict[str, ZooEntry]:
    """DINOv3, EVA-02, Perception Encoder and SigLIP Raptors: the registered raptor_<teacher>_k{2,3,4} archs, built
    with the DINOv3 recipe and the teacher, input size and schedule given on the command line."""
    import timm

    entries = {}
    for arch, spec in RAPTOR_TIMM_ARCHS.items():
        stem, tag, license_id = _FRONTIER_NAMES[spec["teacher"]]
        name = f"{stem}-k{spec['k']}"
        teacher = f"{spec['teacher']}.{tag}"
        config = _FRONTIER_CONFIGS.get((spec["teacher"], spec["k"]))
        args: list[str] = []
        if config is None:
            config = _FRONTIER_BASE_CONFIG
            size = timm.models.get_pretrained_cfg(teacher).input_size[-1]
            args = ["--teacher", teacher, "--teacher-img-size", str(size), "--k", str(spec["k"]),
                    "--block-schedule", *map(str, spec["block_schedule"]), "--output-dir", f"outputs/distill_{name}"]
        entries[name] = ZooEntry(
            name=name, teacher=teacher, k=spec["k"], recipe_config=config, recipe_args=tuple(args),
            schedule_source=spec["schedule_source"], block_schedule=tuple(spec["block_schedule"]),
            architecture=arch, teacher_hub_id=f"timm/{teacher}", license=license_id, datasets=("imagenet-1k",))
    return entries


# transformers teachers (raptor_zoo.hf_convert): Hub repo id -> (recipe config, license); all 12 layers deep, k = 2
# on the paper's DINOv2-B phases (7, 5) until phases are measured on their weights
_TRANSFORMERS_TEACHERS: dict[str, tuple[str, str]] = {
    "facebook/dinov3-vits16-pretrain-lvd1689m": ("recipes/configs/hf_dinov3_vits16_k2.yaml", "dinov3-license"),
    "facebook/dinov3-vitb16-pretrain-lvd1689m": ("recipes/configs/hf_dinov3_vitb16_k2.yaml", "dinov3-license"),
    "google/siglip2-base-patch16-224": ("recipes/configs/hf_siglip2_base_patch16_k2.yaml", "apache-2.0"),
    "openai/clip-vit-base-patch16": ("recipes/configs/hf_clip_vit_base_patch16_k2.yaml", "mit"),
}


def _transformers_entries() -> dict[str, ZooEntry]:
    """Raptors of transformers teachers, named ``raptor-<repo name>-k2``; built by the recipe from the repo id."""
    entries = {}
    for repo_id, (config, license_id) in _TRANSFORMERS_TEACHERS.items():
        name = f"raptor-{repo_id.split('/')[1]}-k2"
        entries[name] = ZooEntry(
            name=name, teacher=repo_id, k=2, recipe_config=config, schedule_source="scaled", block_schedule=(7, 5),
            teacher_hub_id=repo_id, license=license_id, datasets=("imagenet-1k",))
    return entries


ZOO: dict[str, ZooEntry] = {
    **_dinov2_entries(),
    **_frontier_entries(),
    **_transformers_entries(),
    "raptor-digits-k2": ZooEntry(
        name="raptor-digits-k2",
        teacher="digits-vit",
        k=2,
        recipe_config="recipes/configs/digits_k2.yaml",
        schedule_source="measured",
        published=True,
        embedded=True,
        license="apache-2.0",
    ),
}
"""Zoo name -> entry. The embedded entry's schedule is read from its shipped config.json."""

ALIASES: dict[str, str] = {"raptor-dinov2-k2": "raptor-dinov2-base-reg-k2"}


def is_zoo_name(name: str) -> bool:
    """Whether ``name`` is spelled like a zoo name (``raptor-...``, no slash); it need not exist."""
    return isinstance(name, str) and bool(_ZOO_NAME_RE.match(name))


def resolve(name: str) -> ZooEntry:
    """The entry of a zoo name or alias; relaxed names ``<entry>-r{R}`` derive from their base entry."""
    name = ALIASES.get(name, name)
    if name in ZOO:
        return ZOO[name]
    relaxed = _RELAXED_RE.match(name)
    if relaxed:
        base = ALIASES.get(relaxed.group("base"), relaxed.group("base"))
        if base in ZOO and not ZOO[base].embedded:
            return replace(ZOO[base], name=f"{base}-r{relaxed.group('rank')}",
                           relax_rank=int(relaxed.group("rank")), published=False)
    close = difflib.get_close_matches(name, [*ZOO, *ALIASES], n=3)
    raise ValueError(
        f"Unknown zoo model {name!r}." + (f" Did you mean {', '.join(map(repr, close))}?" if close else "")
        + f" raptor_zoo.list_models() lists its {len(ZOO)} entries and {len(ALIASES)} alias(es); a Hub-hosted entry "
        "takes a -r{R} suffix for its relaxed variant (rank-R adapters).")


def locate(entry: ZooEntry) -> tuple[str, str | Path]:
    """Where an entry's folder comes from: ``("folder", path)`` or ``("hub", repo_id)``.

    Raises :class:`ZooModelUnavailableError` (no network call) for unpublished entries without a
    ``RAPTOR_ZOO_HUB_ORG`` redirect and for embedded entries whose files are missing.
    """
    if entry.embedded:
        folder = entry.asset_dir
        if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
            raise ZooModelUnavailableError(
                f"The embedded zoo model {entry.name!r} is missing from this installation (expected "
                f"config.json and model.safetensors in {folder}). Build it with `{entry.recipe_command}` and "
                "load the output folder, or ship it there with "
                f"raptor_zoo.hub.save_pretrained(model, {str(folder)!r}).")
        return "folder", folder
    org = os.environ.get(HUB_ORG_ENV)
    if org:
        return "hub", entry.repo_id(org)
    if not entry.published:
        raise ZooModelUnavailableError(
            f"The zoo model {entry.name!r} is not published yet: it would be the Hub repo "
            f"{entry.repo_id(HUB_ORG)!r}. Build it locally with `{entry.recipe_command}` and load the output "
            f"folder with raptor_zoo.from_pretrained(<folder>), or push your own build and set "
            f"{HUB_ORG_ENV}=<your org> to load <your org>/{entry.name}.")
    return "hub", entry.repo_id(HUB_ORG)


def entry_for_repo_id(repo_id: str) -> ZooEntry | None:
    """The zoo entry a Hub repo id holds by name (``<any org>/<zoo name>``), if any."""
    name = repo_id.split("@", 1)[0].rsplit("/", 1)[-1]
    if not is_zoo_name(name):
        return None
    try:
        return resolve(name)
    except ValueError:
        return None


def _embedded_schedule(entry: ZooEntry) -> tuple[int, ...] | None:
    import json

    config = entry.asset_dir / "config.json"
    if not config.is_file():
        return None
    return tuple(json.loads(config.read_text(encoding="utf-8")).get("block_schedule") or ()) or None


def list_models(pattern: str | None = None) -> list[dict[str, Any]]:
    """Rows describing the zoo: name, repo_id, teacher, k, block_schedule, schedule_source, published,
    available_offline, recipe_command. ``pattern`` filters names by substring."""
    rows = []
    for entry in ZOO.values():
        if pattern and pattern not in entry.name:
            continue
        schedule = _embedded_schedule(entry) if entry.embedded else entry.block_schedule
        rows.append(dict(
            name=entry.name,
            aliases=[alias for alias, target in ALIASES.items() if target == entry.name],
            repo_id=entry.repo_id(),
            teacher=entry.teacher,
            k=entry.k,
            block_schedule=schedule,
            schedule_source=entry.schedule_source,
            published=entry.published,
            available_offline=entry.available_offline,
            recipe_command=entry.recipe_command,
        ))
    return rows
