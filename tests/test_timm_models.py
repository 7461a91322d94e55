"""timm's own tests/test_models.py (timm 1.0.31, vendored under tests/third_party/timm_tests) over the Raptor archs.

timm's module parametrizes every test with ``timm.list_models(...)`` calls made at import. It is imported here with
``list_models`` answering only for the Raptor archs under test, each classified as timm classifies its teacher
ViT: each test keeps timm's own selection (exclude filters, module filters, the non-standard-model filters that
send ViTs to ``test_model_default_cfgs_non_std``) but over Raptors instead of every timm model. Raptors of ViT-B
at 224 px are heavy for CPU CI (forward, backward, TorchScript and FX at full size), so timm's tests are ``slow``;
``test_timm_selects_the_raptor_archs`` (default run) checks the selection.
"""
import importlib
import sys
from unittest import mock

import pytest
import timm

import raptor_zoo  # noqa: F401  (registers the raptor_* archs with timm)
from raptor_zoo.models.archs import REGISTERED_RAPTOR_ARCHS

RAPTOR_ARCHS_UNDER_TEST = (
    "raptor_vit_small_patch14_reg4_dinov2_k2",
    "raptor_vit_small_patch14_reg4_dinov2_k2_r4",
    "raptor_vit_base_patch14_dinov2_k3",
)
_TIMM_TESTS = "third_party.timm_tests.test_models"
_list_models = timm.list_models


def _list_raptor_models(filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False,
                        include_tags=None):
    """timm.list_models answered for the Raptor archs under test as timm answers for their teachers: a Raptor is a
    timm VisionTransformer, so timm's ViT rules (its non-standard-model filters, its forward_intermediates module
    list, its exclude filters) classify it; pretrained and name_matches_cfg are the Raptor's own answers."""
    teachers = {name.split(".")[0] for name in _list_models(
        filter=filter, module=module, exclude_filters=exclude_filters, include_tags=include_tags)}
    own = set(_list_models("raptor_*", pretrained=pretrained, name_matches_cfg=name_matches_cfg))
    return [arch for arch in RAPTOR_ARCHS_UNDER_TEST
            if REGISTERED_RAPTOR_ARCHS[arch]["teacher"] in teachers and arch in own]


def _import_timm_tests():
    sys.modules.pop(_TIMM_TESTS, None)
    with mock.patch.object(timm, "list_models", _list_raptor_models):
        return importlib.import_module(_TIMM_TESTS)


_timm_tests = _import_timm_tests()
# timm's prune contract ends by asserting that a model pruned to tap i has no parameter left without a gradient. A
# Raptor's prune_intermediate_layers shortens the schedule but keeps all k unique blocks and all L step adapters,
# so that a pruned model still loads its full checkpoint (tests/test_models.py::test_prune_shortens_schedule_not_blocks,
# tests/test_relax.py): the blocks after the tap stay unused. timm exempts its own models that leave unreached
# branches unused (CoaT, CrossViT, HRNet: ``partial_branches``) from exactly that check; strict, so a Raptor prune that
# drops unreached blocks makes this test pass and fail here until the mark goes.
_EXPECTED_FAILURES = {
    "test_prune_intermediate_layers_contract": (
        "Raptor pruning keeps the unreached unique blocks and step adapters (full checkpoint still loads); timm "
        "exempts models leaving unreached branches unused (partial_branches: CoaT, CrossViT, HRNet) from this check"),
}
# TorchScript: a Raptor's blocks container hands out per-step views (Python callables), which TorchScript cannot
# compile, as timm's own EXCLUDE_JIT_FILTERS skips its models that TorchScript cannot script ('hiera_*', '*naflex*');
# Raptors deploy through torch.export / ONNX instead (tests/test_export.py, tests/test_models.py::test_model_torch_export).
_SKIPPED_TORCHSCRIPT = (
    "Raptor step views are Python callables that TorchScript cannot compile; timm skips its own unscriptable models "
    "the same way (EXCLUDE_JIT_FILTERS: 'hiera_*', '*naflex*'); use torch.export (raptor-zoo export)")
_RAPTOR_TEST_NAMES = []
for _name in dir(_timm_tests):
    _test = getattr(_timm_tests, _name)
    if hasattr(_test, "_fixture_function_marker"):  # timm's module-level fixtures (cfg_device)
        globals()[_name] = _test
        continue
    if not _name.startswith("test_") or not callable(_test):
        continue
    _params = [mark for mark in getattr(_test, "pytestmark", []) if mark.name == "parametrize"
               and mark.args[0] == "model_name"]
    if _params and set(_params[0].args[1]) & set(RAPTOR_ARCHS_UNDER_TEST):
        _test = pytest.mark.sweep(pytest.mark.slow(_test))  # timm's function, its own marks and parametrization
        if "torchscript" in _name:
            _test = pytest.mark.skip(reason=_SKIPPED_TORCHSCRIPT)(_test)
        if _name in _EXPECTED_FAILURES:
            _test = pytest.mark.xfail(strict=True, raises=AssertionError, reason=_EXPECTED_FAILURES[_name])(_test)
        globals()[_name] = _test
        _RAPTOR_TEST_NAMES.append(_name)


def test_timm_selects_the_raptor_archs():
    """Which of timm's model tests take the Raptor archs, by timm's own filters (fixed_input_size, registers ...)."""
    for arch in RAPTOR_ARCHS_UNDER_TEST:
        assert timm.get_pretrained_cfg_value(arch, "fixed_input_size") is True  # the model asserts its input size
    assert {"test_model_forward", "test_model_backward", "test_model_default_cfgs_non_std",
            "test_model_forward_torchscript", "test_model_forward_intermediates", "test_model_forward_fx",
            "test_model_backward_fx", "test_prune_intermediate_layers_contract"} <= set(_RAPTOR_TEST_NAMES)
    assert "test_model_default_cfgs" not in _RAPTOR_TEST_NAMES  # timm's standard-CNN cfg test skips ViTs
    selected = [mark.args[1] for mark in _timm_tests.test_model_forward.pytestmark if mark.name == "parametrize"
                and mark.args[0] == "model_name"][0]
    assert sorted(selected) == sorted(RAPTOR_ARCHS_UNDER_TEST)
