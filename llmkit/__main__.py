"""`python -m llmkit` (and so `accelerate launch -m llmkit ...`)."""

from llmkit.cli import main

if __name__ == "__main__":
    main()
