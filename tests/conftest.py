pytest_plugins = ["fixtures.tools", "fixtures.images", "fixtures.registry", "fixtures.kube"]
