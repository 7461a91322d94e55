"""transformers' own model tests (ModelTesterMixin, ConfigTester, BackboneTesterMixin) run on the Raptor classes.

Modelled on transformers' per-model test for DINOv2-with-registers (tests/models/dinov2_with_registers): the same
tester layout, the same overrides for a model without input_ids. The mixins are transformers 5.25.0's own code,
vendored under tests/third_party/transformers_tests (see its README.md).

"raptor" is a custom model type (registered with the Auto classes by ``import raptor_zoo``), so transformers' own
name tables (``MODEL_MAPPING_NAMES`` ...) do not list it; the mixins read those tables to know which class is the
base model, the backbone and the image classifier, so the test classes add "raptor" to them while they run, as if
it were a native model.
"""
import functools
import unittest
from unittest import mock

import pytest
from third_party.transformers_tests.test_backbone_common import BackboneTesterMixin
from third_party.transformers_tests.test_configuration_common import ConfigTester
from third_party.transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor
from torch import nn
from transformers.models.auto import modeling_auto
from transformers.testing_utils import torch_device

import raptor_zoo  # noqa: F401  (registers "raptor" with the Auto classes)
from raptor_zoo.models.configuration_raptor import RaptorConfig
from raptor_zoo.models.modeling_raptor import RaptorBackbone, RaptorForImageClassification, RaptorModel

RAPTOR_MAPPING_NAMES = {
    "MODEL_MAPPING_NAMES": "RaptorModel",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES": "RaptorForImageClassification",
    "MODEL_FOR_BACKBONE_MAPPING_NAMES": "RaptorBackbone",
}


class RaptorNamesInTransformersTables:
    """Lists "raptor" in transformers' model-name tables for the duration of a test class."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._name_patches = [mock.patch.dict(getattr(modeling_auto, table), {"raptor": name})
                             for table, name in RAPTOR_MAPPING_NAMES.items()]
        for patch in cls._name_patches:
            patch.start()

    @classmethod
    def tearDownClass(cls):
        for patch in cls._name_patches:
            patch.stop()
        super().tearDownClass()


class RaptorModelTester:
    """Tiny Raptor: one shared block applied twice (L = 2 block applications on k = 1 unique block), registers."""

    def __init__(
        self,
        parent,
        batch_size=13,
        image_size=30,
        patch_size=2,
        num_channels=3,
        is_training=True,
        use_labels=True,
        hidden_size=32,
        block_schedule=(2,),
        num_attention_heads=4,
        mlp_ratio=1.25,
        type_sequence_label_size=10,
        initializer_range=0.02,
        num_register_tokens=2,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.is_training = is_training
        self.use_labels = use_labels
        self.hidden_size = hidden_size
        self.block_schedule = list(block_schedule)
        self.num_hidden_layers = sum(block_schedule)
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.type_sequence_label_size = type_sequence_label_size
        self.initializer_range = initializer_range
        self.num_register_tokens = num_register_tokens
        # as in DINOv2 with registers: patches + 1 cls token + the register tokens
        num_patches = (image_size // patch_size) ** 2
        self.seq_length = num_patches + 1 + num_register_tokens

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size], self.type_sequence_label_size) if self.use_labels else None
        return self.get_config(), pixel_values, labels

    def get_config(self):
        return RaptorConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            block_schedule=self.block_schedule,
            num_attention_heads=self.num_attention_heads,
            mlp_ratio=self.mlp_ratio,
            initializer_range=self.initializer_range,
            num_register_tokens=self.num_register_tokens,
            model_args={"init_values": 1e-5, "no_embed_class": True},
        )

    def create_and_check_model(self, config, pixel_values, labels):
        model = RaptorModel(config=config).to(torch_device).eval()
        result = model(pixel_values)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))

    def create_and_check_backbone(self, config, pixel_values, labels):
        model = RaptorBackbone(config=config).to(torch_device).eval()
        result = model(pixel_values)
        self.parent.assertEqual(len(result.feature_maps), len(config.out_features))
        expected_size = self.image_size // config.patch_size
        self.parent.assertListEqual(
            list(result.feature_maps[0].shape), [self.batch_size, model.channels[0], expected_size, expected_size])
        self.parent.assertEqual(len(model.channels), len(config.out_features))

        config.out_features = None
        model = RaptorBackbone(config=config).to(torch_device).eval()
        result = model(pixel_values)
        self.parent.assertEqual(len(result.feature_maps), 1)
        self.parent.assertListEqual(
            list(result.feature_maps[0].shape), [self.batch_size, model.channels[0], expected_size, expected_size])
        self.parent.assertEqual(len(model.channels), 1)

        config.apply_layernorm = False
        config.reshape_hidden_states = False
        model = RaptorBackbone(config=config).to(torch_device).eval()
        result = model(pixel_values)
        self.parent.assertEqual(len(result.feature_maps), 1)
        self.parent.assertListEqual(
            list(result.feature_maps[0].shape), [self.batch_size, self.seq_length, self.hidden_size])

    def create_and_check_for_image_classification(self, config, pixel_values, labels):
        config.num_labels = self.type_sequence_label_size
        model = RaptorForImageClassification(config).to(torch_device).eval()
        result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.type_sequence_label_size))

        # greyscale images
        config.num_channels = 1
        model = RaptorForImageClassification(config).to(torch_device).eval()
        pixel_values = floats_tensor([self.batch_size, 1, self.image_size, self.image_size])
        result = model(pixel_values)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.type_sequence_label_size))

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class RaptorModelTest(RaptorNamesInTransformersTables, ModelTesterMixin, unittest.TestCase):
    """ModelTesterMixin over RaptorModel, RaptorForImageClassification and RaptorBackbone, as for DINOv2."""

    all_model_classes = (RaptorModel, RaptorForImageClassification, RaptorBackbone)
    test_resize_embeddings = False
    test_torch_exportable = True

    def setUp(self):
        self.model_tester = RaptorModelTester(self)
        self.config_tester = ConfigTester(self, config_class=RaptorConfig, has_text_modality=False, hidden_size=37,
                                          num_attention_heads=1)

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="as transformers skips it for DINOv2-with-registers: the model does not use inputs_embeds")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="as transformers skips it for DINOv2-with-registers: no feed-forward chunking")
    def test_feed_forward_chunking(self):
        pass

    def test_model_get_set_embeddings(self):
        # DINOv2's override: a patch embedding, not an nn.Embedding
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, nn.Linear))

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_backbone(self):
        self.model_tester.create_and_check_backbone(*self.model_tester.prepare_config_and_inputs())

    def test_for_image_classification(self):
        self.model_tester.create_and_check_for_image_classification(*self.model_tester.prepare_config_and_inputs())


# 12-30 s each on 2 shared CPU cores: kept for the slow run. The eager/SDPA comparison keeps its float32 cases in
# the default run; its float16/bfloat16 cases (CPU-emulated half precision) run with the slow tests.
SLOW_MODEL_TESTS = ("test_bc_torch_dtype", "test_model_outputs_equivalence", "test_torch_export")


def _slow(test):
    @functools.wraps(test)
    def run(self, *args, **kwargs):
        return test(self, *args, **kwargs)

    return pytest.mark.slow(run)


for _name in dir(RaptorModelTest):
    if _name in SLOW_MODEL_TESTS or (_name.startswith("test_eager_matches_sdpa_inference_") and "fp32" not in _name):
        setattr(RaptorModelTest, _name, _slow(getattr(RaptorModelTest, _name)))


class RaptorBackboneTest(RaptorNamesInTransformersTables, unittest.TestCase, BackboneTesterMixin):
    """BackboneTesterMixin over RaptorBackbone, as for DINOv2 (DINOv2's backbone sets has_attentions = False;
    a Raptor's returns its L per-step attention maps, so that check runs)."""

    all_model_classes = (RaptorBackbone,)
    config_class = RaptorConfig
    has_attentions = True

    def setUp(self):
        self.model_tester = RaptorModelTester(self)


def test_mixins_ran_against_the_raptor_classes():
    """The vendored mixins are collected here (a skipped or renamed mixin would silently test nothing)."""
    model_tests = [name for name in dir(RaptorModelTest) if name.startswith("test_")]
    backbone_tests = [name for name in dir(RaptorBackboneTest) if name.startswith("test_")]
    assert len(model_tests) > 150 and "test_training_gradient_checkpointing_use_reentrant_true" in model_tests
    assert "test_attention_outputs" in model_tests and "test_torch_export" in model_tests
    assert "test_backbone_outputs" in backbone_tests
