"""Stand-in for transformers' tests/utils/test_configuration_utils.py (not in the sdist): ``config_common_kwargs``.

Non-default values for the fields of transformers' ``PreTrainedConfig`` (the same from 5.23 to 5.25; plus
``output_attentions``), so ``ConfigTester.check_config_arguments_init`` checks that a config class passes all of them
through.
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "is_encoder_decoder": True,
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
