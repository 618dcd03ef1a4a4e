"""TASKS: the one place that maps a recipe's `task:` to the object that knows how to do it."""

from __future__ import annotations

from llmkit.tasks.base import Task
from llmkit.tasks.classification import Classification
from llmkit.tasks.clm import CausalLM
from llmkit.tasks.mlm import MaskedLM
from llmkit.tasks.qa import QuestionAnswering
from llmkit.tasks.summarization import Summarization

TASKS: dict[str, Task] = {
    task.name: task for task in (CausalLM(), MaskedLM(), Classification(), Summarization(), QuestionAnswering())
}
