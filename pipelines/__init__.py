"""The workflow: configuration, data, the one training loop, collection and reporting."""
