"""Model cards for Raptor Hub folders: rendered from ``hub_cards/`` through huggingface_hub, checked by parsing back.

:func:`render_model_card` fills ``hub_cards/raptor_model_card.md`` (Jinja, via ``ModelCard.from_template``) from
a folder's config (``RaptorConfig`` or its ``config.json`` dict) and what was measured:

* YAML metadata (``ModelCardData``): library_name ``raptor_zoo``, tags, base_model (the teacher's Hub id when it
  has one), license (the teacher's), datasets (training), pipeline_tag, and a ``model-index`` holding an
  ``EvalResult`` for each accuracy in ``metrics`` and for nothing else;
* a teacher-vs-Raptor table: parameters and FLOPs are *counted* on the meta device (``raptor_zoo.flops``);
  throughput, accuracy, recovery and fidelity appear only when measured and read "not measured" otherwise.

``metrics`` keys (all optional, see :data:`METRIC_FIELDS`); accuracies are fractions in [0, 1]::

    {"dataset_name": "ImageNet-1k", "dataset_type": "imagenet-1k", "dataset_split": "validation",
     "teacher_accuracy": 0.842, "raptor_accuracy": 0.809, "fidelity": [0.99, ...],  # one value per layer
     "raptor_throughput": 1234.5, "teacher_throughput": 1240.1, "throughput_device": "1x H100, bf16"}

``training`` is a mapping rendered as the "How it was trained" list (config, data, steps, hardware, ...);
``training["datasets"]`` (Hub dataset ids) fills the card's ``datasets``.

A rendered card ends with a marker holding the sha256 of its text (:func:`is_unedited_card`), so a writer can
tell a card it generated from one a person has edited since.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .flops import flops_table
from .models.configuration_raptor import RaptorConfig
from .models.raptor_timm import build_teacher_model, raptor_from_model_args

__all__ = [
    "TEMPLATE_NAME",
    "NOT_MEASURED",
    "METRIC_FIELDS",
    "CITATION",
    "teacher_facts",
    "card_eval_results",
    "build_card_data",
    "render_model_card",
    "validate_card",
    "is_unedited_card",
    "read_template",
]

TEMPLATE_NAME = "raptor_model_card.md"
NOT_MEASURED = "not measured"
LIBRARY_NAME = "raptor_zoo"

METRIC_FIELDS: dict[str, str] = {
    "dataset_name": "evaluation set, human-readable (e.g. 'ImageNet-1k'); required with any accuracy",
    "dataset_type": "evaluation set, Hub dataset id (e.g. 'imagenet-1k'); required with any accuracy",
    "dataset_split": "evaluation split (e.g. 'validation')",
    "num_eval_images": "number of evaluation images",
    "teacher_accuracy": "teacher top-1 with its own head, fraction in [0, 1]",
    "raptor_accuracy": "Raptor top-1 with the teacher's head (copied, frozen), fraction in [0, 1]",
    "teacher_probe_accuracy": "teacher top-1 of a retrained linear probe, fraction in [0, 1]",
    "raptor_probe_accuracy": "Raptor top-1 of a retrained linear probe, fraction in [0, 1]",
    "embedding_cosine": "mean cosine of the Raptor's image embeddings to the teacher's (an embedding head)",
    "fidelity": "per-layer similarity to the teacher's states, one value per layer 1..L",
    "fidelity_metric": "name of the fidelity measure (default 'cosine similarity')",
    "teacher_throughput": "teacher images / s",
    "raptor_throughput": "Raptor images / s",
    "throughput_device": "where throughput was measured (e.g. '1x H100, bf16, batch 256')",
    "teacher_params": "teacher parameter count, when it cannot be counted here",
    "teacher_flops": "teacher FLOPs per image, when they cannot be counted here",
}
_ACCURACY_FIELDS = ("teacher_accuracy", "raptor_accuracy", "teacher_probe_accuracy", "raptor_probe_accuracy")
_MODEL_INDEX_METRICS = {
    "raptor_accuracy": "Top-1 accuracy (teacher's head)",
    "raptor_probe_accuracy": "Top-1 accuracy (linear probe)",
}

CITATION = """@article{jacobs2025blockrecurrent,
  title   = {Block-Recurrent Dynamics in Vision Transformers},
  author  = {Jacobs and Fel and Hakim and Brondetta and Ba and Keller},
  journal = {arXiv preprint arXiv:2512.19941},
  year    = {2025},
  url     = {https://arxiv.org/abs/2512.19941}
}"""

_MARKER_RE = re.compile(r"\n<!-- raptor_zoo card sha256:([0-9a-f]{64}) -->\n?\Z")
_IMAGE_RE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
_TEACHER_TAGS = ("dinov2", "digits", "deit", "clip", "siglip", "eva", "beit", "vit")
"""Hub tags a card takes from its teacher's name (the first that occurs in it), so Raptors are found beside it."""
_SCHEDULE_NOTES = {
    "paper": "the paper's phase boundaries, measured on DINOv2 ViT-B/14 with registers",
    "scaled": "the paper's DINOv2-B phase boundaries scaled to this teacher's depth (not measured on its weights)",
    "measured": "measured on this teacher's trajectories",
    "given": "given explicitly when the Raptor was built",
    "even": "an even split of the layers (not measured)",
}


def read_template(name: str = TEMPLATE_NAME) -> str:
    """Text of a card template from the ``raptor_zoo.hub_cards`` package data (``hub_cards/`` in the repository).

    Installed packages (wheel or editable) expose ``raptor_zoo.hub_cards`` through the package-dir mapping of
    pyproject.toml; a source checkout on ``PYTHONPATH`` is read at that mapping's source, ``<repo>/hub_cards``.
    """
    try:
        template = resources.files("raptor_zoo.hub_cards").joinpath(name)
    except ModuleNotFoundError:
        template = Path(__file__).resolve().parent.parent / "hub_cards" / name
    if not template.is_file():
        raise FileNotFoundError(f"Card template {name!r} not found in raptor_zoo.hub_cards ({template}).")
    return template.read_text(encoding="utf-8")


def _as_config(config: RaptorConfig | Mapping[str, Any]) -> RaptorConfig:
    if isinstance(config, RaptorConfig):
        return config
    if isinstance(config, Mapping):
        return RaptorConfig.from_dict(dict(config))
    raise TypeError(f"config must be a RaptorConfig or a config.json dict, got {type(config).__name__}.")


def _timm_teacher_name(teacher: str) -> str | None:
    """timm name (with tag) a teacher string resolves to, or None when it is not a timm registry name."""
    import timm

    from .teachers import EMBEDDED_TEACHERS

    name = EMBEDDED_TEACHERS.get(teacher, teacher)
    return name if ":" not in name and "/" not in name and timm.is_model(name) else None


def teacher_facts(teacher: str | None) -> dict[str, Any]:
    """Hub id (``base_model``), license, teacher tag and timm name of a teacher string, where they can be known."""
    if not teacher:
        return {}
    import timm

    facts: dict[str, Any] = {"tag": next((tag for tag in _TEACHER_TAGS if tag in teacher.lower()), None)}
    timm_name = _timm_teacher_name(teacher)
    if timm_name is not None:
        cfg = timm.models.get_pretrained_cfg(timm_name, allow_unregistered=True)
        facts.update(timm_name=timm_name, base_model=getattr(cfg, "hf_hub_id", None),
                     license=getattr(cfg, "license", None))
        if "digits" in timm_name:
            facts["tag"] = "digits"
        return facts
    repo_id = teacher.split(":", 1)[1] if teacher.startswith("hf-hub:") else teacher
    repo_id = repo_id.split("@", 1)[0]
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return facts
    if "/" in repo_id:
        facts["base_model"] = repo_id
    return facts


def _measured_on(metrics: Mapping[str, Any]) -> str:
    """What was measured on the evaluation images: accuracy, or only fidelity (a headless teacher), or nothing."""
    if not metrics.get("num_eval_images"):
        return ""
    if any(metrics.get(key) is not None for key in ("teacher_accuracy", "raptor_accuracy")):
        return f" Accuracy measured on {metrics['num_eval_images']} images."
    if metrics.get("embedding_cosine") is not None:
        return f" Image-embedding and per-layer fidelity measured on {metrics['num_eval_images']} held-out images."
    if metrics.get("fidelity") is not None:
        return f" Fidelity measured on {metrics['num_eval_images']} images; accuracy not measured."
    return ""


def _check_metrics(metrics: Mapping[str, Any] | None, depth: int, embedding_head: bool = False) -> dict[str, Any]:
    metrics = dict(metrics or {})
    if embedding_head and any(metrics.get(key) is not None for key in ("teacher_accuracy", "raptor_accuracy")):
        raise ValueError("This Raptor's head is an image-embedding projection, not a classifier: the top-1 of its "
                         "outputs is no accuracy. Report embedding_cosine (and probe accuracies) instead.")
    unknown = sorted(set(metrics) - set(METRIC_FIELDS))
    if unknown:
        raise ValueError(f"Unknown card metrics {unknown}; valid keys: {sorted(METRIC_FIELDS)}.")
    for key in _ACCURACY_FIELDS:
        value = metrics.get(key)
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"metrics[{key!r}]={value} is not a fraction in [0, 1]; pass accuracies as fractions.")
    if any(metrics.get(key) is not None for key in _ACCURACY_FIELDS):
        missing = [key for key in ("dataset_name", "dataset_type") if not metrics.get(key)]
        if missing:
            raise ValueError(f"Accuracies need the evaluation set they were measured on; add metrics {missing}.")
    fidelity = metrics.get("fidelity")
    if fidelity is not None and len(fidelity) != depth:
        raise ValueError(
            f"metrics['fidelity'] has {len(fidelity)} values; give one per layer of the L={depth} block applications.")
    return metrics


def card_eval_results(metrics: Mapping[str, Any] | None) -> list[EvalResult]:
    """``EvalResult`` s of the Raptor's measured accuracies (nothing else enters the model-index)."""
    metrics = dict(metrics or {})
    results = []
    for key, metric_name in _MODEL_INDEX_METRICS.items():
        if metrics.get(key) is None:
            continue
        results.append(EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=metrics["dataset_type"],
            dataset_name=metrics["dataset_name"],
            dataset_split=metrics.get("dataset_split"),
            metric_type="accuracy",
            metric_name=metric_name,
            metric_value=float(metrics[key]),
        ))
    return results


def build_card_data(
        config: RaptorConfig | Mapping[str, Any],
        *,
        model_name: str,
        metrics: Mapping[str, Any] | None = None,
        training: Mapping[str, Any] | None = None,
        card_data: Mapping[str, Any] | None = None,
) -> ModelCardData:
    """YAML metadata of a Raptor card; ``card_data`` entries override the derived ones (e.g. ``license``)."""
    config = _as_config(config)
    metrics = _check_metrics(metrics, config.num_hidden_layers, bool(config.projection_dim))
    facts = teacher_facts(config.teacher)
    task = "image-classification" if config.num_labels else "image-feature-extraction"
    tags = ["raptor", "block-recurrent", "vision", "timm", "transformers", task]
    if facts.get("tag"):
        tags.append(facts["tag"])
    datasets = list((training or {}).get("datasets") or []) or None
    license_id = facts.get("license") or (config.pretrained_cfg or {}).get("license")
    fields: dict[str, Any] = dict(
        library_name=LIBRARY_NAME,
        pipeline_tag=task,
        tags=tags,
        license=license_id,
        base_model=facts.get("base_model"),
        datasets=datasets,
        model_name=model_name,
        eval_results=card_eval_results(metrics) or None,
    )
    fields.update(card_data or {})
    return ModelCardData(**fields)


def _meta_raptor(config: RaptorConfig) -> torch.nn.Module:
    with torch.device("meta"):
        return raptor_from_model_args(config.timm_model_args())


def _meta_teacher(config: RaptorConfig) -> torch.nn.Module:
    """The teacher architecture the Raptor describes (model_args), on the meta device, with the Raptor's head."""
    with torch.device("meta"):
        return build_teacher_model(config.timm_model_args())


def _img_size(config: RaptorConfig) -> tuple[int, int]:
    size = config.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def _fmt_millions(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value / 1e6:.2f} M"


def _fmt_giga(value: float | None) -> str:
    if value is None:
        return NOT_MEASURED
    return f"{value / 1e9:.2f}" if value >= 1e9 else f"{value / 1e9:.3g}"


def _fmt_percent(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{100 * float(value):.2f}%"


def _fmt_cosine(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{float(value):.3f}"


def _fmt_rate(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{float(value):.1f}"


def _fmt_value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return "`" + json.dumps(value, default=str) + "`"
    return str(value)


def _phase_layers(boundaries: Sequence[int]) -> str:
    return ", ".join(f"{a + 1}-{b}" if b - a > 1 else f"{b}" for a, b in zip(boundaries[:-1], boundaries[1:]))


def _is_zoo_model(name: str) -> bool:
    from . import zoo

    try:
        return zoo.is_zoo_name(name) and zoo.resolve(name).name == name
    except ValueError:
        return False


def _card_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_unedited_card(text: str) -> bool:
    """Whether ``text`` is a card raptor_zoo rendered and nobody edited since (its marker hash still matches)."""
    match = _MARKER_RE.search(text)
    return bool(match) and _card_hash(text[:match.start()]) == match.group(1)


def render_model_card(
        config: RaptorConfig | Mapping[str, Any],
        *,
        model_name: str,
        repo_id: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        training: Mapping[str, Any] | None = None,
        files: Sequence[str] = (),
        card_data: Mapping[str, Any] | None = None,
        template: str | None = None,
) -> ModelCard:
    """Render the card of a Raptor folder.

    Args:
        config: the folder's ``RaptorConfig`` (or its config.json dict).
        model_name: the model's name (card title, model-index name), e.g. the folder name.
        repo_id: Hub repo id the loading snippets name; without one they load a local folder.
        metrics: measured numbers (:data:`METRIC_FIELDS`); absent ones read "not measured".
        training: how the weights were trained (rendered as a list; ``datasets`` also fills the metadata).
        files: names of files in the folder: ``phase_heatmap.png`` and ``fidelity.png`` are shown when present.
        card_data: ``ModelCardData`` overrides (license, tags, datasets, ...).
        template: template text (default ``hub_cards/raptor_model_card.md``).
    """
    config = _as_config(config)
    depth = config.num_hidden_layers
    embedding_head = bool(config.projection_dim)
    metrics = _check_metrics(metrics, depth, embedding_head)
    data = build_card_data(config, model_name=model_name, metrics=metrics, training=training, card_data=card_data)
    facts = teacher_facts(config.teacher)

    raptor = _meta_raptor(config)
    teacher = _meta_teacher(config)
    input_size = (config.num_channels, *_img_size(config))
    counted = flops_table(raptor, teacher, input_size)
    raptor_flops = counted["raptor_flops"]
    # numbers given in metrics stand for a teacher that cannot be built here
    teacher_flops = counted["teacher_flops"] if metrics.get("teacher_flops") is None else metrics["teacher_flops"]
    teacher_params = counted["teacher_params"] if metrics.get("teacher_params") is None else metrics["teacher_params"]
    recovery = None
    if metrics.get("raptor_accuracy") is not None and metrics.get("teacher_accuracy"):
        recovery = float(metrics["raptor_accuracy"]) / float(metrics["teacher_accuracy"])
    dataset = metrics.get("dataset_name")
    on_dataset = f" on {dataset}" + (f" {metrics['dataset_split']}" if metrics.get("dataset_split") else "") \
        if dataset else ""
    throughput_where = f" ({metrics['throughput_device']})" if metrics.get("throughput_device") else ""
    fidelity = metrics.get("fidelity")
    comparison = [
        ("Parameters (counted)", _fmt_millions(teacher_params), _fmt_millions(counted["raptor_params"])),
        ("Block parameters (counted)", _fmt_millions(counted["teacher_block_params"]),
         _fmt_millions(counted["raptor_block_params"])),
        (f"GFLOPs per image at {input_size[1]}x{input_size[2]} (counted)", _fmt_giga(teacher_flops),
         _fmt_giga(raptor_flops)),
        (f"Throughput, images/s{throughput_where}", _fmt_rate(metrics.get("teacher_throughput")),
         _fmt_rate(metrics.get("raptor_throughput"))),
        *([("Image-embedding cosine to the teacher's (held-out images)", "-",
            _fmt_cosine(metrics.get("embedding_cosine")))] if embedding_head else [
            (f"Top-1 accuracy, teacher's head{on_dataset}", _fmt_percent(metrics.get("teacher_accuracy")),
             _fmt_percent(metrics.get("raptor_accuracy"))),
            ("Accuracy recovery (Raptor / teacher)", "-",
             NOT_MEASURED if recovery is None else f"{100 * recovery:.1f}%"),
        ]),
        (f"Top-1 accuracy, retrained linear probe{on_dataset}", _fmt_percent(metrics.get("teacher_probe_accuracy")),
         _fmt_percent(metrics.get("raptor_probe_accuracy"))),
        (f"Mean per-layer {metrics.get('fidelity_metric', 'cosine similarity')}", "-",
         NOT_MEASURED if fidelity is None else f"{sum(map(float, fidelity)) / len(fidelity):.3f}"),
    ]
    comparison_note = (
        "Parameters and FLOPs are counted with `torch.utils.flop_counter` on the meta device (FLOPs = 2 x MACs, "
        'attention included); the other rows are measurements and read "not measured" where none was made.'
        + _measured_on(metrics))

    limitations = []
    source = config.schedule_source
    if source in ("scaled", "even"):
        limitations.append(f"The phases are {_SCHEDULE_NOTES[source]}.")
    if config.block_type == "swiglu":
        ratio = f" (counted here: {raptor_flops / teacher_flops:.2f}x the teacher's FLOPs)" if teacher_flops else ""
        limitations.append(
            "Its blocks are the paper's SwiGLU blocks (hidden 4·D, packed input projection), about 1.3x the FLOPs of "
            f"the teacher's GELU block{ratio}.")
    relax_rank = config.relax_rank
    relaxation = None
    if relax_rank:
        relaxation = (f"rank-{relax_rank} per-step low-rank adapters on {', '.join(counted['relax_targets'])} of the "
                      f"shared blocks: +{counted['relax_params'] / 1e6:.3f} M parameters "
                      f"(+{100 * counted['relax_params_fraction_of_blocks']:.1f}% of the shared blocks, "
                      f"+{100 * counted['relax_params_fraction']:.1f}% of the model), "
                      f"+{100 * counted['relax_flops_fraction']:.2f}% FLOPs (counted)")
        limitations.append(
            f"Its rank-{relax_rank} per-step adapters add {100 * counted['relax_params_fraction_of_blocks']:.1f}% "
            f"parameters beyond the k shared blocks and {100 * counted['relax_flops_fraction']:.2f}% FLOPs; "
            "FLOP parity with the teacher is not exact.")
    if embedding_head:
        limitations.append(
            "Its head is the teacher's image-embedding projection, not a classifier: no accuracy applies to it, and "
            "the image-embedding cosine above is what was measured" if metrics.get("embedding_cosine") is not None
            else "Its head is the teacher's image-embedding projection, not a classifier; the fidelity of its "
                 "embeddings was not measured.")
    elif recovery is None:
        limitations.append("No accuracy was measured for these weights; expect some loss against the teacher.")
    if not training:
        limitations.append(
            "How these weights were trained was not recorded; they may be an initialisation from the teacher "
            "rather than a distilled model.")
    limitations.append(
        "A Raptor approximates its teacher's trajectory: its features drift from the teacher's where the per-layer "
        "fidelity is low, and downstream results of the teacher do not carry over unless measured.")

    boundaries = list(config.phase_boundaries or [0, *[sum(config.block_schedule[:j + 1])
                                                         for j in range(config.k)]])
    meta = config.raptor_meta or {}
    files = set(files)
    head_note = f"{config.num_labels} classes" if config.num_labels else "no classifier (features)"
    if embedding_head:
        head_note = (f"the teacher's {config.projection_dim}-d image-embedding projection (not a classifier: "
                     "`AutoModel` returns `image_embeds`)")
    if config.num_labels and config.global_pool == "cls_avg":
        head_note += " on concat(cls, mean patch) (2·D inputs)"
    kwargs = dict(
        model_name=model_name,
        model_id=repo_id or f"path/to/{model_name}",
        timm_id=f"hf-hub:{repo_id}" if repo_id else f"local-dir:path/to/{model_name}",
        zoo_name=model_name if _is_zoo_model(model_name) else None,
        teacher=config.teacher,
        teacher_url=f"https://huggingface.co/{facts['base_model']}" if facts.get("base_model") else None,
        teacher_revision=config.teacher_revision,
        k=config.k,
        block_schedule=tuple(config.block_schedule),
        depth=depth,
        depth_plus_one=depth + 1,
        phase_layers=_phase_layers(boundaries),
        schedule_note=_SCHEDULE_NOTES.get(source, f"source {source!r}") if source else "source not recorded",
        block_type_note=(
            "the teacher's own block architecture (FLOPs equal the teacher's)" if config.block_type == "teacher"
            else "the paper's SwiGLU block (about 1.3x the teacher block's FLOPs)"),
        t_scale="on" if (config.model_args or {}).get("t_scale", True) else "off",
        relaxation=relaxation,
        input_size=f"{input_size[0]}x{input_size[1]}x{input_size[2]}",
        patch_size=config.patch_size,
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        num_register_tokens=config.num_register_tokens,
        global_pool=config.global_pool,
        head_note=head_note,
        architecture=config.architecture,
        heatmap="phase_heatmap.png" if "phase_heatmap.png" in files else None,
        phase_metric=config.phase_metric or "metric not recorded",
        phase_algorithm=meta.get("phase_algorithm", "an unrecorded algorithm"),
        comparison=comparison,
        comparison_note=comparison_note,
        fidelity=None if fidelity is None else [(i + 1, f"{float(v):.3f}") for i, v in enumerate(fidelity)],
        fidelity_metric=metrics.get("fidelity_metric", "cosine similarity"),
        fidelity_plot="fidelity.png" if "fidelity.png" in files else None,
        training=[(str(key), _fmt_value(value)) for key, value in (training or {}).items()],
        limitations=limitations,
        citation=CITATION,
    )
    text = str(ModelCard.from_template(data, template_str=template or read_template(), **kwargs))
    text = str(ModelCard(re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"))
    return ModelCard(text + f"\n<!-- raptor_zoo card sha256:{_card_hash(text)} -->\n")


def validate_card(
        card: ModelCard | str | Path,
        *,
        metrics: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Parse a card back offline and check its metadata; return the parsed ``ModelCard``.

    Checks: the YAML parses into ``ModelCardData`` (a malformed ``model-index`` raises), library_name and the
    ``raptor`` tag, a pipeline_tag, that text and metadata survive a parse / re-emit round trip, that images it
    shows exist beside it (for a card file), and, when ``metrics`` are given, that the model-index holds
    exactly their ``EvalResult`` s (no number that was not measured).
    """
    folder = None
    if isinstance(card, Path) or (isinstance(card, str) and "\n" not in card):
        if not Path(card).is_file():
            raise FileNotFoundError(f"No card file at {str(card)!r}.")
        folder = Path(card).parent
        card = ModelCard.load(Path(card))
    elif isinstance(card, str):
        card = ModelCard(card)
    elif not isinstance(card, ModelCard):
        raise TypeError(f"validate_card takes a ModelCard, a card file or card text, got {type(card).__name__}.")
    problems = []
    data = card.data
    if data.library_name != LIBRARY_NAME:
        problems.append(f"library_name is {data.library_name!r}, expected {LIBRARY_NAME!r}")
    if "raptor" not in (data.tags or []):
        problems.append(f"tags {data.tags} lack 'raptor'")
    if data.pipeline_tag not in ("image-classification", "image-feature-extraction"):
        problems.append(f"pipeline_tag is {data.pipeline_tag!r}")
    reparsed = ModelCard(str(card))
    if str(reparsed) != str(card) or reparsed.data.to_dict() != data.to_dict():
        problems.append("the card does not survive a parse / re-emit round trip")
    for result in data.eval_results or []:
        if not isinstance(result.metric_value, (int, float)) or not math.isfinite(result.metric_value):
            problems.append(f"model-index value {result.metric_value!r} of {result.metric_name!r} is not a number")
    if metrics is not None:
        expected = [(r.metric_name, r.metric_value, r.dataset_type, r.dataset_split)
                    for r in card_eval_results(metrics)]
        found = [(r.metric_name, r.metric_value, r.dataset_type, r.dataset_split) for r in data.eval_results or []]
        if sorted(expected, key=str) != sorted(found, key=str):
            problems.append(f"model-index holds {found}, the measured metrics give {expected}")
    if folder is not None:
        missing = [src for src in _IMAGE_RE.findall(card.text) if "://" not in src and not (folder / src).is_file()]
        if missing:
            problems.append(f"images {missing} are shown but absent from {folder}")
    if problems:
        raise ValueError("Invalid Raptor model card: " + "; ".join(problems) + ".")
    return card
