pytest_plugins = ["fixtures.tools", "fixtures.images", "fixtures.boot", "fixtures.registry", "fixtures.kube",
                  "fixtures.node", "fixtures.image_build", "fixtures.operator", "fixtures.fleet"]
