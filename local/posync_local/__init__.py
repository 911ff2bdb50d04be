"""Local runtime, provider sandboxes and the posync CLI. Never shipped in the Lambda layer."""
