"""Mechanisms that several tasks share: label maps, prompt → target, LM packing, batched generation, scores,
work spread across processes. A task module composes these; nothing here knows which task uses it."""
