"""The Kubernetes operator: InitramfsBuilds become build Jobs running the CLI. The engine never imports this."""
