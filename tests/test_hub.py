"""The Hub folder: one writer, one reader, three loaders, the zoo, and the push (network boundary patched)."""
import json
import shutil
import struct
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import yaml
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from transformers import AutoBackbone, AutoImageProcessor, AutoModel, AutoModelForImageClassification

import raptor_zoo
from raptor_zoo import cards, hub, zoo
from raptor_zoo.cli import main
from raptor_zoo.models.modeling_raptor import RaptorBackbone
from raptor_zoo.models.raptor_vit import RaptorVisionTransformer

REPO_ROOT = Path(__file__).resolve().parents[1]

ARCH = "raptor_vit_small_patch14_reg4_dinov2_k2"
TINY = dict(img_size=28, embed_dim=32, num_heads=2, block_schedule=(2, 1))
COMMIT = "0123456789abcdef0123456789abcdef01234567"
METRICS = {"dataset_name": "Digits", "dataset_type": "digits", "dataset_split": "test",
           "teacher_accuracy": 0.95, "raptor_accuracy": 0.9, "fidelity": [0.99, 0.98, 0.97]}


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere (depth-scale gates included), so any mis-loaded tensor changes outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture
def tiny_raptor() -> RaptorVisionTransformer:
    return _randomise(timm.create_model(ARCH, num_classes=5, **TINY))


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def saved(tmp_path, tiny_raptor) -> Path:
    return hub.save_pretrained(tiny_raptor, tmp_path / "tiny", metrics=METRICS, repo_id="org/name")


def _cache_snapshot(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def test_save_writes_one_folder_layout(saved, tiny_raptor):
    assert sorted(p.name for p in saved.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    state = safetensors.torch.load_file(saved / "model.safetensors")
    assert sorted(state) == sorted(tiny_raptor.state_dict())
    assert not any(key.startswith("blocks.2") for key in state)  # k = 2 unique blocks, each stored once
    with open(saved / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert header["__metadata__"] == {"format": "pt"}
    config = json.loads((saved / "config.json").read_text())
    assert config["architecture"] == ARCH and config["num_classes"] == 5 and config["num_features"] == 32
    assert config["model_args"]["block_schedule"] == [2, 1] and config["model_args"]["teacher_args"]["embed_dim"] == 32
    assert config["pretrained_cfg"]["input_size"] == [3, 28, 28]
    assert config["pretrained_cfg"]["hf_hub_filename"] == "model.safetensors"
    assert config["model_type"] == "raptor" and config["architectures"] == ["RaptorForImageClassification"]
    assert config["block_schedule"] == [2, 1] and config["phase_boundaries"] == [0, 2, 3]
    card = cards.validate_card(saved / "README.md", metrics=METRICS)
    assert card.data.model_name == "name"


def test_three_libraries_load_the_same_folder(saved, tiny_raptor, images):
    with torch.no_grad():
        expected_features = tiny_raptor.forward_features(images)
        expected_logits = tiny_raptor(images)
        ours = hub.load_pretrained(saved)
        assert torch.equal(ours.forward_features(images), expected_features)
        timm_model = timm.create_model(f"local-dir:{saved}", pretrained=True).eval()
        assert torch.equal(timm_model(images), expected_logits)
        hf_model = AutoModel.from_pretrained(saved)
        assert torch.allclose(hf_model(images).last_hidden_state, expected_features, atol=1e-6)
        classifier = AutoModelForImageClassification.from_pretrained(saved)
        assert torch.allclose(classifier(images).logits, expected_logits, atol=1e-6)
    assert ours.raptor_meta["block_schedule"] == [2, 1]


def test_offline_hub_cache_feeds_every_loader(saved, tiny_raptor, images, isolated_hf_hub, monkeypatch):
    _cache_snapshot(isolated_hf_hub, "org/name", saved)
    # transformers 5.23's AutoBackbone asks the Hub whether the repo exists before loading: answer for the Hub
    monkeypatch.setattr(HfApi, "repo_exists", lambda self, repo_id, **kwargs: repo_id == "org/name")
    with torch.no_grad():
        expected = tiny_raptor.forward_features(images)
        expected_map = tiny_raptor.forward_intermediates(images, indices=[2], norm=True, intermediates_only=True)[0]
        ours = raptor_zoo.from_pretrained("org/name")
        pinned = hub.load_pretrained("org/name", revision=COMMIT)
        timm_model = timm.create_model("hf-hub:org/name", pretrained=True).eval()
        hf_model = AutoModel.from_pretrained("org/name")
        backbone = AutoBackbone.from_pretrained("org/name", out_indices=[3])
        assert isinstance(backbone, RaptorBackbone)
        assert torch.equal(ours.forward_features(images), expected)
        assert torch.equal(pinned.forward_features(images), expected)
        assert torch.equal(timm_model.forward_features(images), expected)
        assert torch.allclose(hf_model(images).last_hidden_state, expected, atol=1e-6)
        assert torch.allclose(backbone(images).feature_maps[0], expected_map, atol=1e-6)
    # AutoImageProcessor reads a repo's preprocessor_config.json but a local folder's config.json (transformers takes
    # it for a timm checkpoint): both give the processor save_pretrained wrote
    written = hub.image_processor(hub.read_config(saved)).to_dict()
    assert AutoImageProcessor.from_pretrained("org/name").to_dict() == written
    assert AutoImageProcessor.from_pretrained(str(saved)).to_dict() == written


def test_missing_repo_offline_names_repo_and_recipe():
    with pytest.raises(FileNotFoundError, match="org/absent") as err:
        hub.load_pretrained("org/absent")
    assert "HF_HUB_OFFLINE" in str(err.value) and "recipes/distill.py" in str(err.value)
    entry = zoo.resolve("raptor-dinov2-large-k3")
    with pytest.raises(FileNotFoundError, match="someorg/raptor-dinov2-large-k3") as err:
        hub.load_pretrained("someorg/raptor-dinov2-large-k3")
    assert entry.recipe_command in str(err.value)


@pytest.mark.parametrize("name, repo_id, recipe", [
    ("raptor-dinov2-base-reg-k2", "raptor-zoo/raptor-dinov2-base-reg-k2",
     "accelerate launch recipes/distill.py --config recipes/configs/dinov2_vitb14_reg4_k2.yaml"),
    ("raptor-dinov2-k2", "raptor-zoo/raptor-dinov2-base-reg-k2",
     "accelerate launch recipes/distill.py --config recipes/configs/dinov2_vitb14_reg4_k2.yaml"),
    ("raptor-dinov2-giant-k4-r8", "raptor-zoo/raptor-dinov2-giant-k4-r8",
     "accelerate launch recipes/distill.py --config recipes/configs/dinov2_vitg14_k4.yaml --relax-rank 8"),
])
def test_unpublished_zoo_name_fails_before_any_network_call(name, repo_id, recipe, monkeypatch):
    calls = []
    monkeypatch.setattr(hub, "hf_hub_download", lambda *args, **kwargs: calls.append((args, kwargs)))
    with pytest.raises(zoo.ZooModelUnavailableError) as err:
        raptor_zoo.from_pretrained(name)
    assert calls == []
    assert repo_id in str(err.value) and recipe in str(err.value)


def test_unknown_zoo_name_suggests_close_names():
    with pytest.raises(ValueError, match="raptor-dinov2-base-reg-k2"):
        zoo.resolve("raptor-dinov2-base-reg-k5")


def test_hub_org_redirect_loads_through_huggingface_hub(saved, isolated_hf_hub, monkeypatch, images):
    monkeypatch.setenv(zoo.HUB_ORG_ENV, "myorg")
    _cache_snapshot(isolated_hf_hub, "myorg/raptor-dinov2-small-reg-k2", saved)
    seen = []
    real_download = hub.hf_hub_download
    monkeypatch.setattr(hub, "hf_hub_download", lambda repo_id, filename, **kw: seen.append(repo_id)
                        or real_download(repo_id, filename, **kw))
    model = raptor_zoo.from_pretrained("raptor-dinov2-small-reg-k2")
    assert seen == ["myorg/raptor-dinov2-small-reg-k2"] * 3  # config.json, model.safetensors, preprocessor_config.json
    assert model.block_schedule == (2, 1)
    assert zoo.resolve("raptor-dinov2-small-reg-k2").repo_id() == "myorg/raptor-dinov2-small-reg-k2"


def test_embedded_entry_loads_from_package_data_without_network(saved, tmp_path, monkeypatch, images):
    entry = zoo.resolve("raptor-digits-k2")
    assert entry.published and entry.embedded
    assets = tmp_path / "assets"
    monkeypatch.setattr(zoo.ZooEntry, "asset_dir", property(lambda self: assets / self.name))
    with pytest.raises(zoo.ZooModelUnavailableError, match="recipes/configs/digits_k2.yaml"):
        raptor_zoo.from_pretrained("raptor-digits-k2")
    shutil.copytree(saved, assets / "raptor-digits-k2")
    monkeypatch.setattr(hub, "hf_hub_download", lambda *args, **kwargs: pytest.fail("network call"))
    monkeypatch.setenv(zoo.HUB_ORG_ENV, "myorg")  # package data stays the source of embedded entries
    model = raptor_zoo.from_pretrained("raptor-digits-k2")
    assert model.block_schedule == (2, 1)
    row = next(r for r in zoo.list_models() if r["name"] == "raptor-digits-k2")
    assert row["available_offline"] and row["block_schedule"] == (2, 1)


def test_list_models_covers_the_zoo():
    rows = raptor_zoo.list_models()
    names = [row["name"] for row in rows]
    frontier = {f"{stem}-k{k}" for k in (2, 3, 4) for stem in (
        *(f"raptor-dinov3-{s}" for s in ("small", "small-plus", "base", "large", "huge-plus", "7b")),
        *(f"raptor-eva02-{s}" for s in ("small", "base", "large")),
        *(f"raptor-pe-core-{s}" for s in ("small", "base", "large")), "raptor-siglip-base")}
    transformers_teachers = {
        "raptor-dinov3-vits16-pretrain-lvd1689m-k2": "facebook/dinov3-vits16-pretrain-lvd1689m",
        "raptor-dinov3-vitb16-pretrain-lvd1689m-k2": "facebook/dinov3-vitb16-pretrain-lvd1689m",
        "raptor-siglip2-base-patch16-224-k2": "google/siglip2-base-patch16-224",
        "raptor-clip-vit-base-patch16-k2": "openai/clip-vit-base-patch16"}
    assert len(rows) == 25 + 39 + 4 == len(set(names))
    assert {f"raptor-dinov2-{s}{r}-k{k}" for s in ("small", "base", "large", "giant")
            for r in ("", "-reg") for k in (2, 3, 4)} | {"raptor-digits-k2"} | frontier | set(transformers_teachers) \
        == set(names)
    assert all(not row["published"] for row in rows if row["name"] in frontier | set(transformers_teachers))
    paper = next(row for row in rows if row["name"] == "raptor-dinov2-base-reg-k2")
    assert paper["aliases"] == ["raptor-dinov2-k2"]
    assert paper["block_schedule"] == (7, 5) and paper["schedule_source"] == "paper"
    assert paper["repo_id"] == "raptor-zoo/raptor-dinov2-base-reg-k2"
    assert not paper["published"] and not paper["available_offline"]
    for name, repo_id in transformers_teachers.items():
        entry = zoo.ZOO[name]
        recipe = yaml.safe_load((REPO_ROOT / entry.recipe_config).read_text())
        assert entry.teacher == entry.teacher_hub_id == recipe["teacher"] == repo_id
        assert entry.recipe_command.startswith(f"accelerate launch recipes/distill.py --config {entry.recipe_config}")
    for entry in zoo.ZOO.values():
        if not entry.embedded and entry.name not in transformers_teachers:
            cfg = timm.models.get_pretrained_cfg(entry.teacher)
            assert entry.teacher_hub_id == cfg.hf_hub_id
            with torch.device("meta"):
                depth = len(timm.create_model(entry.teacher.split(".")[0]).blocks)
            assert sum(entry.block_schedule) == depth, entry.name
    assert [row["name"] for row in zoo.list_models("giant-reg")] == [
        "raptor-dinov2-giant-reg-k2", "raptor-dinov2-giant-reg-k3", "raptor-dinov2-giant-reg-k4"]


def test_truncated_weights_raise_a_clear_error(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        hub.load_pretrained(saved)


def test_missing_unexpected_and_misshapen_keys_are_listed(saved, tiny_raptor):
    weights = saved / "model.safetensors"
    state = safetensors.torch.load_file(weights)
    state.pop("norm.weight")
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(7, 32)
    state["extra.weight"] = torch.zeros(1)
    safetensors.torch.save_file(state, weights)
    with pytest.raises(ValueError) as err:
        hub.load_pretrained(saved)
    message = str(err.value)
    assert "missing keys 1 ['norm.weight']" in message and "unexpected keys 1 ['extra.weight']" in message
    assert "blocks.0.mlp.fc1.weight: weights (7, 32) vs model (128, 32)" in message
    with pytest.raises(ValueError, match="shape mismatches"):
        hub.load_pretrained(saved, strict=False)  # shapes never load
    state["blocks.0.mlp.fc1.weight"] = tiny_raptor.state_dict()["blocks.0.mlp.fc1.weight"]
    safetensors.torch.save_file(state, weights)
    with pytest.warns(UserWarning, match="norm.weight"):
        model = hub.load_pretrained(saved, strict=False)
    assert torch.equal(model.blocks[0].mlp.fc1.weight, tiny_raptor.blocks[0].mlp.fc1.weight)


def test_only_safetensors_and_raptor_configs_load(saved, tiny_raptor):
    (saved / "model.safetensors").unlink()
    torch.save(tiny_raptor.state_dict(), saved / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="never unpickles"):
        hub.load_pretrained(saved)
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps(dict(config, model_type="dinov2")))
    with pytest.raises(ValueError, match="does not describe a Raptor"):
        hub.read_config(saved)


def test_model_kwargs_give_a_fresh_head_or_a_new_size(saved, tiny_raptor):
    model = hub.load_pretrained(saved, num_classes=3)
    assert model.head.out_features == 3
    assert torch.equal(model.blocks[1].attn.qkv.weight, tiny_raptor.blocks[1].attn.qkv.weight)
    bigger = hub.load_pretrained(saved, img_size=42)
    assert bigger(torch.randn(1, 3, 42, 42)).shape == (1, 5)


def test_save_refuses_aliased_blocks(tmp_path, tiny_raptor):
    tiny_raptor.blocks.add_module("1", tiny_raptor.unique_blocks[0])  # alias one shared block at two indices
    with pytest.raises(ValueError, match="shares memory"):
        hub.save_pretrained(tiny_raptor, tmp_path / "aliased")
    assert not (tmp_path / "aliased").exists()


def test_bad_metrics_fail_before_anything_is_written(tmp_path, tiny_raptor):
    with pytest.raises(ValueError, match="Unknown card metrics"):
        hub.save_pretrained(tiny_raptor, tmp_path / "x", metrics={"top1": 0.5})
    assert not (tmp_path / "x").exists()


def test_generic_raptor_round_trips_through_timm(tmp_path, images):
    teacher = timm.create_model("vit_digits_patch8_reg4", pretrained=False)
    model = _randomise(RaptorVisionTransformer.from_teacher(teacher, block_schedule=(5, 7)))
    folder = hub.save_pretrained(model, tmp_path / "digits", training={"steps": 300})
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == hub.GENERIC_ARCHITECTURE
    assert config["schedule_source"] == "given" and config["block_schedule"] == [5, 7]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hub.load_pretrained(folder)(x), model(x))
        assert torch.equal(timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x), model(x))


def test_discovered_phases_ship_with_the_folder(tmp_path):
    teacher = _randomise(timm.create_model("vit_digits_patch8_reg4", pretrained=False))
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model = RaptorVisionTransformer.from_teacher(teacher, k=2, images=images)
    folder = hub.save_pretrained(model, tmp_path / "measured")
    assert {"phases.json", "phase_heatmap.png"} <= {p.name for p in folder.iterdir()}
    phases = json.loads((folder / "phases.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    assert phases["block_schedule"] == config["block_schedule"] == list(model.block_schedule)
    assert config["schedule_source"] == "measured" and config["phase_metric"] == phases["metric"]
    card = cards.validate_card(folder / "README.md")
    assert "![Layer distance matrix" in card.text and "measured on this teacher's trajectories" in card.text
    assert hub.load_pretrained(folder).raptor_meta["phase_metric"] == phases["metric"]


def test_transformers_model_saves_through_the_one_writer(saved, tmp_path, images):
    classifier = AutoModelForImageClassification.from_pretrained(saved)
    folder = hub.save_pretrained(classifier, tmp_path / "from_hf")
    assert json.loads((folder / "config.json").read_text())["architecture"] == ARCH
    with torch.no_grad():
        assert torch.allclose(hub.load_pretrained(folder)(images), classifier(images).logits, atol=1e-5)


def test_card_policy_regenerates_ours_and_keeps_edited(tmp_path, tiny_raptor):
    folder = hub.save_pretrained(tiny_raptor, tmp_path / "m")
    assert "not measured" in (folder / "README.md").read_text()
    hub.save_pretrained(tiny_raptor, folder, metrics=METRICS)
    assert "90.00%" in (folder / "README.md").read_text()  # our unedited card follows the new numbers
    edited = (folder / "README.md").read_text().replace("## Limitations", "## Limitations\n\nMy note.")
    (folder / "README.md").write_text(edited)
    with pytest.warns(UserWarning, match="edited by hand"):
        hub.save_pretrained(tiny_raptor, folder)
    assert (folder / "README.md").read_text() == edited
    hub.save_pretrained(tiny_raptor, folder, overwrite_card=True)
    assert "My note." not in (folder / "README.md").read_text()


def _patch_hub_api(monkeypatch) -> dict:
    """Replace the network calls of HfApi; record what they receive (files are read during the call)."""
    seen: dict = {"create_repo": [], "upload_folder": [], "create_branch": []}

    def create_repo(self, repo_id, **kwargs):
        seen["create_repo"].append(dict(repo_id=repo_id, library=self.library_name, **kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, **kwargs):
        seen["create_branch"].append(dict(repo_id=repo_id, **kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        seen["upload_folder"].append(dict(repo_id=repo_id, files=files, **kwargs))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{COMMIT}", commit_message="m",
                          commit_description="", oid=COMMIT, pr_url=None)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return seen


def test_push_model_uploads_one_validated_commit(tmp_path, tiny_raptor, monkeypatch):
    seen = _patch_hub_api(monkeypatch)
    plot = tmp_path / "fid.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")
    url = hub.push_to_hub(tiny_raptor, "org/name", private=True, revision="v1", metrics=METRICS,
                          plots={"fidelity.png": plot})
    assert url == f"https://huggingface.co/org/name/commit/{COMMIT}"
    assert seen["create_repo"] == [dict(repo_id="org/name", library="raptor_zoo", private=True, exist_ok=True)]
    assert seen["create_branch"] == [dict(repo_id="org/name", branch="v1", exist_ok=True)]
    (upload,) = seen["upload_folder"]
    assert sorted(upload["files"]) == [
        "README.md", "config.json", "fidelity.png", "model.safetensors", "preprocessor_config.json"]
    assert upload["revision"] == "v1" and upload["create_pr"] is False
    card_text = upload["files"]["README.md"].decode()
    card = cards.validate_card(card_text, metrics=METRICS)
    assert str(ModelCard(str(card))) == card_text
    index = card.data.to_dict()["model-index"][0]
    assert index["results"][0]["metrics"] == [
        {"type": "accuracy", "value": 0.9, "name": "Top-1 accuracy (teacher's head)"}]
    assert 'timm.create_model("hf-hub:org/name", pretrained=True)' in card_text
    assert "![Per-layer fidelity](fidelity.png)" in card_text
    assert json.loads(upload["files"]["config.json"])["num_classes"] == 5


def test_push_command_dry_run_uploads_nothing(saved, monkeypatch, capsys):
    seen = _patch_hub_api(monkeypatch)
    assert main(["push", str(saved), "--repo_id", "org/name", "--dry-run", "--private"]) == 0
    out = capsys.readouterr().out
    assert seen == {"create_repo": [], "upload_folder": [], "create_branch": []}
    for name in ("README.md", "config.json", "model.safetensors"):
        assert name in out
    assert "library_name: raptor_zoo" in out and "private=True" in out
    assert main(["push", str(saved), "--repo-id", "org/name", "--create-pr"]) == 0
    assert seen["upload_folder"][0]["create_pr"] is True and "/commit/" in capsys.readouterr().out


def test_push_folder_is_validated_before_the_network(saved, monkeypatch):
    seen = _patch_hub_api(monkeypatch)
    (saved / "README.md").write_text("---\nlibrary_name: timm\n---\n# not ours\n")
    with pytest.raises(ValueError, match="library_name is 'timm'"):
        hub.push_to_hub(saved, "org/name")
    assert seen["create_repo"] == []


def test_relaxed_raptor_round_trips_through_every_loader(tmp_path, images, isolated_hf_hub, monkeypatch):
    relaxed = _randomise(timm.create_model(ARCH, num_classes=5, relax_rank=2, relax_targets=("qkv", "fc2"), **TINY))
    folder = hub.save_pretrained(relaxed, tmp_path / "relaxed", metrics=METRICS, repo_id="org/relaxed")
    assert "Relaxation:** rank-2" in (folder / "README.md").read_text()
    _cache_snapshot(isolated_hf_hub, "org/relaxed", folder)
    monkeypatch.setattr(HfApi, "repo_exists", lambda self, repo_id, **kwargs: repo_id == "org/relaxed")
    with torch.no_grad():
        expected, logits = relaxed.forward_features(images), relaxed(images)
        expected_map = relaxed.forward_intermediates(images, indices=[2], norm=True, intermediates_only=True)[0]
        for source in (folder, "org/relaxed"):
            ours = raptor_zoo.from_pretrained(source)
            assert ours.relax_rank == 2 and torch.equal(ours.forward_features(images), expected)
        for name in (f"local-dir:{folder}", "hf-hub:org/relaxed"):
            assert torch.equal(timm.create_model(name, pretrained=True).eval()(images), logits)
        hf_model = AutoModel.from_pretrained("org/relaxed")
        assert hf_model.config.relax_rank == 2
        assert torch.allclose(hf_model(images).last_hidden_state, expected, atol=1e-6)
        classifier = AutoModelForImageClassification.from_pretrained(folder)
        assert torch.allclose(classifier(images).logits, logits, atol=1e-6)
        backbone = AutoBackbone.from_pretrained("org/relaxed", out_indices=[3])
        assert torch.allclose(backbone(images).feature_maps[0], expected_map, atol=1e-6)


def test_model_methods_round_trip_the_one_folder(tmp_path):
    model = raptor_zoo.from_pretrained("raptor-digits-k2")
    folder = model.save_pretrained(tmp_path / "x")
    reference = hub.save_pretrained(model, tmp_path / "reference")
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in reference.iterdir())
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert (folder / name).read_bytes() == (reference / name).read_bytes()
    loaded = type(model).from_pretrained(tmp_path / "x")
    assert type(loaded) is RaptorVisionTransformer and not loaded.training
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
        assert torch.equal(loaded(images, num_steps=5), model(images, num_steps=5))


def test_model_push_to_hub_uploads_the_folder(tiny_raptor, tmp_path, monkeypatch):
    seen = _patch_hub_api(monkeypatch)
    url = tiny_raptor.push_to_hub("org/name", private=True, create_pr=False, metrics=METRICS)
    assert url == f"https://huggingface.co/org/name/commit/{COMMIT}"
    assert seen["create_repo"] == [dict(repo_id="org/name", library="raptor_zoo", private=True, exist_ok=True)]
    (upload,) = seen["upload_folder"]
    assert sorted(upload["files"]) == [
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert cards.validate_card(upload["files"]["README.md"].decode(), metrics=METRICS).data.model_name == "name"
    url = tiny_raptor.save_pretrained(tmp_path / "mine", repo_id="org/mine", push_to_hub=True, metrics=METRICS)
    assert url.endswith(COMMIT) and seen["upload_folder"][1]["repo_id"] == "org/mine"
    assert seen["upload_folder"][1]["files"]["model.safetensors"] == (tmp_path / "mine" / "model.safetensors").read_bytes()


def test_backbone_from_a_classifier_folder_is_quiet_a_lost_head_is_loud(saved, tiny_raptor, images):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone = RaptorVisionTransformer.from_pretrained(saved, num_classes=0)
        other_head = RaptorVisionTransformer.from_pretrained(saved, num_classes=3)
        same_head = RaptorVisionTransformer.from_pretrained(saved, global_pool="avg", fc_norm=False)
    with torch.no_grad():
        assert torch.equal(backbone(images), tiny_raptor.forward_head(tiny_raptor.forward_features(images),
                                                                      pre_logits=True))
    assert other_head.head.out_features == 3
    assert torch.equal(same_head.head.weight, tiny_raptor.head.weight)  # a head that fits is kept
    with pytest.warns(UserWarning, match="newly initialised"):
        RaptorVisionTransformer.from_pretrained(saved, global_pool="cls_avg")
    with pytest.raises(ValueError, match="missing keys"):
        state = safetensors.torch.load_file(saved / "model.safetensors")
        safetensors.torch.save_file({k: v for k, v in state.items() if not k.startswith("head.")},
                                    saved / "model.safetensors", metadata={"format": "pt"})
        RaptorVisionTransformer.from_pretrained(saved)
