"""Label selectors match nodes exactly as the API server's do (one rule a row)."""

import pytest

from initramfs_operator.kube.selector import matches

NODE = {"kubernetes.io/os": "linux", "vm-host": "true", "zone": "a"}


@pytest.mark.parametrize(("selector", "expected"), [
    (None, False),                                                          # no selector: nothing
    ({}, True),                                                             # empty: everything
    ({"matchLabels": {"vm-host": "true"}}, True),
    ({"matchLabels": {"vm-host": "false"}}, False),
    ({"matchLabels": {"missing": ""}}, False),                              # absent is not empty
    ({"matchLabels": {"vm-host": "true", "zone": "b"}}, False),              # all must hold
    ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}, True),
    ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}, False),
    ({"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["x"]}]}, False),
    ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}]}, True),
    ({"matchExpressions": [{"key": "gpu", "operator": "NotIn", "values": ["x"]}]}, True),  # absent: not in
    ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, False),
    ({"matchExpressions": [{"key": "vm-host", "operator": "Exists"}]}, True),
    ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, False),
    ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, True),
    ({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, False),
    ({"matchLabels": {"vm-host": "true"},
      "matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}, False),  # labels and expressions
])
def test_selector(selector, expected):
    assert matches(selector, NODE) is expected
