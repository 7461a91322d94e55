"""timm's own tests/test_models.py (timm 1.0.31, vendored under tests/third_party/timm_tests) over the Raptor archs.

timm's module parametrizes every test with ``timm.list_models(...)`` calls made at import. It is imported here with
``list_models`` answering only the Raptor archs under test, so each test keeps timm's own selection (its exclude
filters, ``name_matches_cfg``, module filters, the non-standard-model filters) but over Raptors instead of every
timm model. Raptors of ViT-B at 224 px are heavy for CPU CI (forward, backward, TorchScript and FX at full size),
so the whole module is ``slow``; ``test_timm_selects_the_raptor_archs`` (default run) checks the selection.
"""
import importlib
import sys
from unittest import mock

import pytest
import timm

import raptor_zoo  # noqa: F401  (registers the raptor_* archs with timm)

RAPTOR_ARCHS_UNDER_TEST = (
    "raptor_vit_small_patch14_reg4_dinov2_k2",
    "raptor_vit_small_patch14_reg4_dinov2_k2_r4",
    "raptor_vit_base_patch14_dinov2_k3",
)
_TIMM_TESTS = "third_party.timm_tests.test_models"
_list_models = timm.list_models


def _list_raptor_models(*args, **kwargs):
    """timm.list_models with timm's own filters, restricted to the Raptor archs under test."""
    return [name for name in _list_models(*args, **kwargs) if name in RAPTOR_ARCHS_UNDER_TEST]


def _import_timm_tests():
    sys.modules.pop(_TIMM_TESTS, None)
    with mock.patch.object(timm, "list_models", _list_raptor_models):
        return importlib.import_module(_TIMM_TESTS)


_timm_tests = _import_timm_tests()
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
        globals()[_name] = pytest.mark.slow(_test)  # timm's function, its own marks and parametrization
        _RAPTOR_TEST_NAMES.append(_name)


def test_timm_selects_the_raptor_archs():
    """Which of timm's model tests take the Raptor archs, by timm's own filters (fixed_input_size, registers ...)."""
    for arch in RAPTOR_ARCHS_UNDER_TEST:
        assert timm.get_pretrained_cfg_value(arch, "fixed_input_size") is True  # the model asserts its input size
    assert {"test_model_forward", "test_model_backward", "test_model_default_cfgs", "test_model_forward_torchscript",
            "test_model_forward_features", "test_model_forward_fx", "test_model_backward_fx"} <= set(_RAPTOR_TEST_NAMES)
    selected = [mark.args[1] for mark in _timm_tests.test_model_forward.pytestmark if mark.name == "parametrize"
                and mark.args[0] == "model_name"][0]
    assert sorted(selected) == sorted(RAPTOR_ARCHS_UNDER_TEST)
