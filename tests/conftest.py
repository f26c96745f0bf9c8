import pytest

pytest_plugins = ["fixtures.tools", "fixtures.images", "fixtures.boot", "fixtures.registry", "fixtures.kube",
                  "fixtures.node", "fixtures.image_build", "fixtures.operator", "fixtures.fleet"]

# Test tiers (markers registered in pyproject.toml), read off each test's fixture closure so that a new
# test is marked by what it uses, not by anyone remembering to: `cluster` for the test network and what
# stands on it (the control plane, the node, their registries), `vm` for the qemu kernel (fixtures.boot:
# boot() takes the `kernel` or `arm64_kernel` fixture, so a test that boots has it in its closure).
TIERS = {"cluster": {"kube", "cluster_network"}, "vm": {"kernel", "arm64_kernel"}}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for marker, needs in TIERS.items():
            if fixtures & needs:
                item.add_marker(marker)
