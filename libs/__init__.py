"""Shared code of the Enclave services: event models, subjects, bus, settings, context.

Nothing in libs/ knows any service; services meet only on the bus.
"""
