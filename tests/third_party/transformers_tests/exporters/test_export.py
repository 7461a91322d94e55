"""Stand-in for transformers' tests/exporters/test_export.py (not in the sdist): the ``torch.export`` check.

``ModelTesterMixin`` inherits ``ExportTesterMixin``; transformers' own version drives every exporter backend. This one
keeps the check its ``test_torch_exportable`` flag names: each model class exports with transformers'
``DynamoExporter`` (``torch.export`` non-strict) and the exported program reproduces eager outputs.
"""
import copy

import torch
from torch.utils._pytree import tree_leaves
from transformers.exporters.configs import DynamoConfig
from transformers.exporters.exporter_dynamo import DynamoExporter
from transformers.testing_utils import torch_device


class ExportTesterMixin:
    test_torch_exportable = True

    def test_torch_export(self, atol: float = 1e-4, rtol: float = 1e-4):
        if not self.test_torch_exportable:
            self.skipTest(reason="test_torch_exportable is False for this model tester")
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            with self.subTest(model_class.__name__):
                model = model_class(copy.deepcopy(config)).to(torch_device).eval()
                inputs = self._prepare_for_class(inputs_dict, model_class)
                with torch.no_grad():
                    eager = model(**inputs)
                    program, _ = DynamoExporter().export_program(model, inputs, config=DynamoConfig())
                    exported = program.module()(**inputs)
                eager_tensors = [t for t in tree_leaves(eager.to_tuple()) if isinstance(t, torch.Tensor)]
                exported_tensors = [t for t in tree_leaves(exported) if isinstance(t, torch.Tensor)]
                self.assertTrue(eager_tensors)
                self.assertEqual(len(eager_tensors), len(exported_tensors))
                for expected, actual in zip(eager_tensors, exported_tensors):
                    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)
