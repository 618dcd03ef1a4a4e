"""llmkit: a recipe YAML goes in; a trained, evaluated, reproducible model folder comes out."""

__version__ = "0.1.0"
