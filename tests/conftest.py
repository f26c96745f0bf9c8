pytest_plugins = ["fixtures.tools", "fixtures.images", "fixtures.boot", "fixtures.registry", "fixtures.kube",
                  "fixtures.operator"]
