"""Stand-in for transformers' tests/generation/test_utils.py (not in the sdist).

test_modeling_common only checks ``issubclass(test_class, GenerationTesterMixin)`` against ``model.can_generate()``;
Raptors cannot generate, so their test classes must not inherit it, which an empty class checks as well.
"""


class GenerationTesterMixin:
    """Marker mixin: a model test that runs transformers' `generate` tests inherits it."""
