"""The transformers contract of the Raptor classes, restated from transformers' ModelTesterMixin, BackboneTesterMixin
and ConfigTester (tests/ is not in the wheel) on tiny configs."""
import inspect
import json
import subprocess
import sys
from unittest import mock

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification
from transformers.modeling_layers import GradientCheckpointingLayer

import raptor_zoo  # noqa: F401  (registers "raptor" with the Auto classes)
from raptor_zoo.flops import count_params
from raptor_zoo.models.attention_maps import attention_maps
from raptor_zoo.models.configuration_raptor import RaptorConfig
from raptor_zoo.models.modeling_raptor import (
    RaptorBackbone,
    RaptorForImageClassification,
    RaptorModel,
    RaptorPreTrainedModel,
    register_raptor_auto_classes,
)
from raptor_zoo.models.raptor_vit import RaptorVisionTransformer

ALL_MODEL_CLASSES = (RaptorModel, RaptorForImageClassification, RaptorBackbone)


class RaptorModelTester:
    """Tiny config (3 block applications on k = 2 blocks, < 1M parameters) and its inputs."""

    batch_size = 2
    image_size = 28
    patch_size = 14
    hidden_size = 32
    num_register_tokens = 4
    block_schedule = [2, 1]
    num_labels = 3

    def get_config(self, **overrides) -> RaptorConfig:
        kwargs = dict(
            hidden_size=self.hidden_size, num_attention_heads=2, mlp_ratio=2.0, image_size=self.image_size,
            patch_size=self.patch_size, num_register_tokens=self.num_register_tokens,
            block_schedule=self.block_schedule, num_labels=self.num_labels,
            model_args={"init_values": 1e-5, "no_embed_class": True}, out_indices=[1, 3])
        kwargs.update(overrides)
        return RaptorConfig(**kwargs)

    def prepare_config_and_inputs_for_common(self) -> tuple[RaptorConfig, dict]:
        generator = torch.Generator().manual_seed(0)
        pixel_values = torch.randn(self.batch_size, 3, self.image_size, self.image_size, generator=generator)
        return self.get_config(), {"pixel_values": pixel_values}


TESTER = RaptorModelTester()


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Non-zero depth-scale gates and LayerScale, so that every tensor matters to the outputs."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def _make(model_class, config=None):
    config = config or TESTER.get_config()
    return _randomise(model_class(config))


def test_config_common(tmp_path):
    config = TESTER.get_config()
    assert config.num_hidden_layers == 3 and config.k == 2
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3"]
    assert RaptorConfig.from_dict(json.loads(config.to_json_string())).to_dict() == config.to_dict()
    config.save_pretrained(tmp_path / "sub" / "folder")
    reloaded = AutoConfig.from_pretrained(tmp_path / "sub" / "folder")
    assert isinstance(reloaded, RaptorConfig) and reloaded.to_diff_dict() == config.to_diff_dict()
    # saved, the fields' description is the teacher architecture's (the one model_args schema)
    assert reloaded.timm_model_args() == config.timm_model_args()
    assert {"init_values": 1e-5, "no_embed_class": True}.items() <= reloaded.model_args["teacher_args"].items()
    assert RaptorConfig(num_labels=7).num_labels == 7
    default = RaptorConfig()
    assert default.hidden_size == 768 and default.block_schedule == [7, 5] and default.out_features == ["stage12"]


def test_config_carries_complete_timm_keys():
    config_dict = TESTER.get_config().to_dict()
    args = config_dict["model_args"]  # the Raptor described by its teacher architecture, as every Raptor is
    assert args["teacher_arch"] == "VisionTransformer" and args["block_schedule"] == [2, 1]
    assert args["teacher_args"]["embed_dim"] == 32 and args["teacher_args"]["reg_tokens"] == 4
    assert args["num_classes"] == config_dict["num_classes"] == 3
    assert config_dict["architecture"] == "raptor_vit" and config_dict["num_features"] == 32
    # model_args alone rebuild the architecture (what timm does with config.json)
    rebuilt = timm.create_model(config_dict["architecture"], **args)
    assert rebuilt.depth == 3 and rebuilt.num_reg_tokens == 4 and rebuilt.head.out_features == 3


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="hidden_size=32 but model_args\\['embed_dim'\\]=64"):
        RaptorConfig(hidden_size=32, model_args={"embed_dim": 64})
    with pytest.raises(ValueError, match="num_hidden_layers"):
        RaptorConfig(block_schedule=[2, 1], num_hidden_layers=4)
    with pytest.raises(ValueError, match="global_pool"):
        RaptorConfig(global_pool="map")
    with pytest.raises(ValueError, match="out_features must be a subset"):
        RaptorConfig(block_schedule=[2, 1], out_features=["stage4"])


def test_labels_round_trip_through_timm_label_names():
    config = TESTER.get_config(id2label={0: "cat", 1: "dog", 2: "bird"}, label2id=None)
    config_dict = config.to_dict()
    assert config_dict["label_names"] == ["cat", "dog", "bird"] and "id2label" not in config_dict
    assert RaptorConfig.from_dict(config_dict).id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert RaptorConfig.from_dict(config_dict, num_labels=5).num_labels == 5


def test_model_is_small_and_metadata():
    config, inputs = TESTER.prepare_config_and_inputs_for_common()
    for model_class in ALL_MODEL_CLASSES:
        model = model_class(config)
        assert count_params(model) < 1_000_000
        base_class = RaptorModel if model_class is RaptorForImageClassification else RaptorVisionTransformer
        assert model.base_model_prefix == "raptor" and type(model.base_model) is base_class
        assert isinstance(model.core, RaptorVisionTransformer) and model.core.num_classes == 0
        assert model.main_input_name == "pixel_values"
        assert list(inspect.signature(model.forward).parameters)[0] == "pixel_values"
        assert model.core.num_unique_blocks == config.k <= 2


def test_hidden_states_follow_dinov2_conventions():
    config, inputs = TESTER.prepare_config_and_inputs_for_common()
    model = _make(RaptorModel, config)
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
        states = outputs.hidden_states
        assert len(states) == config.num_hidden_layers + 1
        tokens = 1 + TESTER.num_register_tokens + (TESTER.image_size // TESTER.patch_size) ** 2
        assert all(state.shape == (TESTER.batch_size, tokens, TESTER.hidden_size) for state in states)
        assert torch.equal(states[0], model.raptor._embed(inputs["pixel_values"]))
        assert torch.equal(outputs.last_hidden_state, model.raptor.norm(states[-1]))
        assert torch.equal(outputs.pooler_output, outputs.last_hidden_state[:, 0])
        assert torch.allclose(outputs.last_hidden_state, model.raptor.forward_features(inputs["pixel_values"]))
        prefix = model.raptor.num_prefix_tokens
        intermediates = model.raptor.forward_intermediates(
            inputs["pixel_values"], output_fmt="NLC", intermediates_only=True)
        for state, intermediate in zip(states[1:], intermediates):
            assert torch.allclose(state[:, prefix:], intermediate, atol=1e-6)
        assert model(**inputs).hidden_states is None
        as_tuple = model(**inputs, return_dict=False)
        assert len(as_tuple) == 2 and torch.equal(as_tuple[0], outputs.last_hidden_state)


def test_determinism_and_batching_equivalence():
    config, inputs = TESTER.prepare_config_and_inputs_for_common()
    for model_class in (RaptorModel, RaptorForImageClassification):
        model = _make(model_class, config)
        with torch.no_grad():
            first = model(**inputs)[0]
            assert torch.equal(first, model(**inputs)[0])
            single = model(pixel_values=inputs["pixel_values"][:1])[0]
        assert torch.allclose(first[:1], single, atol=1e-5)


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_save_load_round_trip_writes_timm_keys(model_class, tmp_path):
    config, inputs = TESTER.prepare_config_and_inputs_for_common()
    model = _make(model_class, config)
    model.save_pretrained(tmp_path)
    keys = set(safetensors.torch.load_file(tmp_path / "model.safetensors"))
    timm_keys = set(model.to_timm().state_dict())
    assert keys == timm_keys  # the documented mapping: HF key = "raptor." + timm key (+ base prefix for heads)
    assert ("head.weight" in keys) == (model_class is RaptorForImageClassification)
    assert not any(key.startswith("blocks.2") for key in keys)
    reloaded = model_class.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    with torch.no_grad():
        for a, b in zip(model(**inputs).to_tuple(), reloaded(**inputs).to_tuple()):
            for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
                assert torch.allclose(x, y, atol=1e-5)
    # the folder is a timm folder too, with num_classes describing the head actually saved
    timm_model = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert timm_model.num_classes == model.num_saved_classes
    with torch.no_grad():
        assert torch.allclose(timm_model.forward_features(inputs["pixel_values"]),
                              model.core.forward_features(inputs["pixel_values"]), atol=1e-5)
        if model_class is RaptorForImageClassification:
            assert torch.allclose(timm_model(inputs["pixel_values"]), model(**inputs).logits, atol=1e-5)


def test_auto_classes_and_base_model_loading(tmp_path):
    config, inputs = TESTER.prepare_config_and_inputs_for_common()
    classifier = _make(RaptorForImageClassification, config)
    classifier.save_pretrained(tmp_path)
    base, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]  # the head is skipped on purpose, quietly
    assert type(base) is RaptorModel and type(AutoModelForImageClassification.from_pretrained(tmp_path)) \
        is RaptorForImageClassification
    assert type(AutoBackbone.from_config(config)) is RaptorBackbone
    with torch.no_grad():
        assert torch.allclose(base(**inputs).last_hidden_state,
                              classifier.core.forward_features(inputs["pixel_values"]), atol=1e-5)
    base.save_pretrained(tmp_path / "base")
    assert json.loads((tmp_path / "base" / "config.json").read_text())["num_classes"] == 0  # no head was saved
    loaded, info = RaptorForImageClassification.from_pretrained(
        tmp_path / "base", num_labels=3, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["head.bias", "head.weight"] and not info["unexpected_keys"]
    assert torch.isfinite(loaded.head.weight).all() and loaded.head.weight.std() < 0.1
    for key, value in base.state_dict().items():  # the base weights land under the base model prefix
        assert torch.equal(loaded.state_dict()[f"raptor.{key}"], value), key


def test_load_with_mismatched_head(tmp_path):
    config, _ = TESTER.prepare_config_and_inputs_for_common()
    _make(RaptorForImageClassification, config).save_pretrained(tmp_path)
    with pytest.raises(Exception, match="(?i)size|shape"):
        RaptorForImageClassification.from_pretrained(tmp_path, num_labels=5)
    model = RaptorForImageClassification.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True)
    assert model.head.out_features == 5 and model.config.num_labels == 5


def test_backbone_feature_maps_channels_and_stage_selection():
    config, inputs = TESTER.prepare_config_and_inputs_for_common()
    backbone = _make(RaptorBackbone, config)
    grid = TESTER.image_size // TESTER.patch_size
    assert backbone.out_features == ["stage1", "stage3"] and backbone.out_indices == [1, 3]
    assert backbone.channels == [TESTER.hidden_size] * 2 and len(backbone.num_features) == 4
    with torch.no_grad():
        outputs = backbone(**inputs)
        assert outputs.hidden_states is None
        assert [f.shape for f in outputs.feature_maps] == [(TESTER.batch_size, TESTER.hidden_size, grid, grid)] * 2
        expected = backbone.raptor.forward_intermediates(
            inputs["pixel_values"], indices=[0, 2], norm=True, intermediates_only=True)
        for feature_map, reference in zip(outputs.feature_maps, expected):
            assert torch.allclose(feature_map, reference, atol=1e-6)
        assert len(backbone(**inputs, output_hidden_states=True).hidden_states) == 4
    stem = _make(RaptorBackbone, TESTER.get_config(out_indices=None, out_features=["stem", "stage2"]))
    assert stem.out_indices == [0, 2]
    flat = _make(RaptorBackbone, TESTER.get_config(out_indices=[-1], reshape_hidden_states=False))
    with torch.no_grad():
        (feature_map,) = flat(**inputs).feature_maps
    assert feature_map.shape == (TESTER.batch_size, 1 + TESTER.num_register_tokens + grid * grid, TESTER.hidden_size)


@pytest.mark.parametrize("problem_type, labels, loss_fn", [
    ("single_label_classification", torch.tensor([0, 2]), lambda logits, y: F.cross_entropy(logits, y)),
    ("multi_label_classification", torch.tensor([[1., 0., 1.], [0., 1., 0.]]),
     lambda logits, y: F.binary_cross_entropy_with_logits(logits, y)),
    ("regression", torch.tensor([[0.5, -1., 2.], [1., 0., 0.]]), lambda logits, y: F.mse_loss(logits, y)),
])
def test_problem_types(problem_type, labels, loss_fn):
    config, inputs = TESTER.prepare_config_and_inputs_for_common()
    config.problem_type = problem_type
    model = _make(RaptorForImageClassification, config)
    outputs = model(**inputs, labels=labels)
    assert torch.allclose(outputs.loss, loss_fn(outputs.logits, labels))


@pytest.mark.parametrize("global_pool", ["token", "avg", "cls_avg"])
def test_pooling_matches_timm(global_pool):
    config, inputs = TESTER.prepare_config_and_inputs_for_common()
    config = TESTER.get_config(global_pool=global_pool)
    model = _make(RaptorForImageClassification, config)
    expected_in = 2 * TESTER.hidden_size if global_pool == "cls_avg" else TESTER.hidden_size
    assert model.head.in_features == expected_in
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, model.to_timm()(inputs["pixel_values"]))


@pytest.mark.parametrize("checkpointing_kwargs", [None, {"use_reentrant": True}, {"use_reentrant": False}])
def test_training_and_gradient_checkpointing(checkpointing_kwargs):
    """transformers' convention: every unrolled step is a RaptorStep (GradientCheckpointingLayer) run through the
    checkpoint function transformers hands it, with the requested use_reentrant; gradients equal the plain ones."""
    config, inputs = TESTER.prepare_config_and_inputs_for_common()
    labels = torch.tensor([0, 1])
    model = _make(RaptorForImageClassification, config).train()
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert not model.is_activation_checkpointing
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing_kwargs)
    step_layer = model.raptor.step
    assert isinstance(step_layer, GradientCheckpointingLayer) and step_layer.gradient_checkpointing
    assert not model.core.grad_checkpointing  # transformers checkpoints the steps, the core does not again
    reentrant = []
    checkpoint_func = step_layer._gradient_checkpointing_func
    assert checkpoint_func.keywords == (checkpointing_kwargs or {"use_reentrant": False})

    def spy(function, *args, **kwargs):
        reentrant.append(checkpoint_func.keywords["use_reentrant"])
        return checkpoint_func(function, *args, **kwargs)

    with mock.patch.object(step_layer, "_gradient_checkpointing_func", side_effect=spy) as patched:
        checkpointed = model(**inputs, labels=labels).loss
        checkpointed.backward()
    assert patched.call_count == config.num_hidden_layers  # one checkpoint per block application, L of them
    assert set(reentrant) == {(checkpointing_kwargs or {}).get("use_reentrant", False)}
    assert torch.allclose(checkpointed, loss)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[name], atol=1e-6), name
    model.activation_checkpointing_disable()
    assert not step_layer.gradient_checkpointing and not model.is_activation_checkpointing


def test_no_tied_or_aliased_weights():
    config, _ = TESTER.prepare_config_and_inputs_for_common()
    for model_class in ALL_MODEL_CLASSES:
        model = model_class(config)
        assert not model.all_tied_weights_keys
        pointers = [t.untyped_storage().data_ptr() for t in model.state_dict().values()]
        assert len(pointers) == len(set(pointers))
        assert all(isinstance(t, torch.nn.Parameter) or name.endswith("running_mean")
                   for name, t in model.named_parameters())


def test_fresh_init_is_exact_depth_scaling_and_small_tokens():
    model = RaptorModel(TESTER.get_config())
    for block in model.raptor.blocks:
        assert torch.count_nonzero(block.depth_scale.fc2.weight) == 0
        assert torch.count_nonzero(block.depth_scale.fc2.bias) == 0
        assert torch.allclose(block.ls1.gamma, torch.full_like(block.ls1.gamma, 1e-5))
    assert model.raptor.cls_token.abs().max() < 1e-4 and model.raptor.pos_embed.std() < 0.05
    with torch.device("meta"):
        meta_model = RaptorModel(TESTER.get_config())
    assert meta_model.raptor.cls_token.is_meta


def test_attentions_are_the_per_step_maps_and_eager_matches_sdpa(tmp_path):
    """output_attentions returns L maps (hidden_states has L + 1): the probabilities each step used, equal to
    the timm-side helper's, for every class and for a relaxed Raptor."""
    config, inputs = TESTER.prepare_config_and_inputs_for_common()
    _make(RaptorModel, config).save_pretrained(tmp_path)
    sdpa = AutoModel.from_pretrained(tmp_path)
    eager = AutoModel.from_pretrained(tmp_path, attn_implementation="eager")
    tokens = 1 + TESTER.num_register_tokens + (TESTER.image_size // TESTER.patch_size) ** 2
    with torch.no_grad():
        assert torch.allclose(sdpa(**inputs).last_hidden_state, eager(**inputs).last_hidden_state, atol=1e-5)
        assert not eager.raptor.blocks[0].attn.fused_attn
        outputs = sdpa(**inputs, output_attentions=True, output_hidden_states=True)
        assert sdpa.raptor.blocks[0].attn.fused_attn is False  # the maps are those the blocks computed with
        reference = attention_maps(sdpa.raptor, inputs["pixel_values"])
    assert len(outputs.attentions) == config.num_hidden_layers == len(outputs.hidden_states) - 1 == 3
    for step_map, expected in zip(outputs.attentions, reference):
        assert step_map.shape == (TESTER.batch_size, 2, tokens, tokens)
        assert torch.allclose(step_map.sum(-1), torch.ones(()), atol=1e-5)
        assert torch.allclose(step_map, expected, atol=1e-5)
    # the two applications of block 0 attend differently (their inputs differ), so L maps are not k maps
    assert not torch.allclose(outputs.attentions[0], outputs.attentions[1], atol=1e-4)
    for model_class in (RaptorForImageClassification, RaptorBackbone):
        with torch.no_grad():
            maps = _make(model_class, config)(**inputs, output_attentions=True).attentions
        assert len(maps) == config.num_hidden_layers
    relaxed = _make(RaptorModel, TESTER.get_config(model_args={"init_values": 1e-5, "no_embed_class": True,
                                                               "relax_rank": 2}))
    with torch.no_grad():
        relaxed_maps = relaxed(**inputs, output_attentions=True).attentions
        relaxed_reference = attention_maps(relaxed.raptor, inputs["pixel_values"])
    for step_map, expected in zip(relaxed_maps, relaxed_reference, strict=True):
        assert torch.allclose(step_map, expected, atol=1e-6)


def test_registration_is_idempotent_and_happens_on_import():
    register_raptor_auto_classes()
    register_raptor_auto_classes()
    code = ("import raptor_zoo, transformers;"
            "c = transformers.AutoConfig.for_model('raptor', block_schedule=[1, 1]);"
            "print(type(transformers.AutoBackbone.from_config(c)).__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "RaptorBackbone"


def test_pretrained_model_subclasses_share_the_core():
    assert issubclass(RaptorBackbone, RaptorPreTrainedModel)
    assert RaptorPreTrainedModel.config_class is RaptorConfig
