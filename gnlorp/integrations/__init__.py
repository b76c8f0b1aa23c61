"""Adapters to other training libraries; each is imported on its own (`gnlorp.integrations.transformers`)
so that gnlorp.optim never needs them."""
