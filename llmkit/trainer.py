"""TrainingArguments and Trainer construction (the recipe's `training:` plus llmkit's safe defaults), and the
guards a training run runs under: a non-finite loss stops it, a signal stops it at a step with a checkpoint."""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from llmkit import early_stopping
from llmkit.checkpoints import latest_checkpoint as latest_checkpoint  # where the tests and scripts look for it
from llmkit.console import on_terminal
from llmkit.errors import Interrupted, LlmkitError
from llmkit.launch import strategy, strategy_lines
from llmkit.models import is_decoder_only
from llmkit.tasks.base import TokenMeanCrossEntropy, loss_counts_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

    from llmkit.recipe import Recipe
    from llmkit.tasks.base import Prepared, Task


def default_arguments() -> dict[str, Any]:
    """Defaults that differ from Hugging Face's, each for a reason a user would agree with."""
    import torch

    # `--cpu` (or accelerate's own ACCELERATE_USE_CPU) keeps a GPU machine's processes on the CPU.
    on_gpu = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true")
    return {
        # Tasks produce exactly the columns their collator needs (a special-token mask, for one).
        "remove_unused_columns": False,
        "report_to": ["tensorboard"] if importlib.util.find_spec("tensorboard") else "none",
        "use_cpu": not on_gpu,
        "dataloader_pin_memory": on_gpu,
        # Let a NaN reach the divergence check instead of being averaged away in the logs.
        "logging_nan_inf_filter": False,
        "ddp_find_unused_parameters": False,
        "save_total_limit": 2,
        "eval_strategy": "no",
        # Off a terminal, progress bars are a wall of carriage returns: `console` prints one line per log instead.
        "disable_tqdm": not on_terminal(),
        # Use the hardware: bf16 autocast where the GPU has it (SDPA attention and fused AdamW are already
        # the transformers defaults); a recipe's own `fp16`/`bf16` wins.
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
    }


def training_arguments(recipe: Recipe, **overrides: Any) -> TrainingArguments:
    """The recipe's `training:` section as TrainingArguments (Seq2Seq's superset, valid for every Trainer)."""
    from transformers import Seq2SeqTrainingArguments

    chosen = early_stopping.arguments(recipe, {**recipe.training.arguments(), **overrides})
    kwargs = {**default_arguments(), **chosen}
    if chosen.get("fp16") and "bf16" not in chosen:
        kwargs["bf16"] = False
    if kwargs.get("fp16") and kwargs.get("use_cpu"):
        raise LlmkitError("recipe field `training.fp16`: fp16 needs a GPU; on CPU use `training.bf16: true` or neither")
    require_optional_packages(kwargs)
    try:
        return Seq2SeqTrainingArguments(**kwargs)
    except (ValueError, TypeError, ImportError) as err:
        raise LlmkitError(f"recipe section `training`: {argument_message(err)}") from None


#: `optim:` values that need a package beyond transformers' own dependencies (matched by prefix)
OPTIMIZER_PACKAGES = {
    "adamw_bnb": "bitsandbytes",
    "adamw_8bit": "bitsandbytes",
    "paged_": "bitsandbytes",
    "lion_8bit": "bitsandbytes",
    "rmsprop_bnb": "bitsandbytes",
    "rmsprop_8bit": "bitsandbytes",
    "ademamix": "bitsandbytes",
    "galore": "galore_torch",
    "apollo": "apollo_torch",
    "lomo": "lomo_optim",
    "adalomo": "lomo_optim",
    "schedule_free": "schedulefree",
    "grokadamw": "grokadamw",
    "stable_adamw": "torch_optimi",
    "adamw_torch_4bit": "torchao",
    "adamw_torch_8bit": "torchao",
    "adamw_anyprecision": "torchdistx",
}


def require_optional_packages(arguments: dict[str, Any]) -> None:
    """A recipe that needs a package that is not installed fails before anything runs, naming the package
    (`llmkit check` calls this too)."""
    needed: list[tuple[str, str]] = []
    if arguments.get("deepspeed"):
        needed.append(("training.deepspeed", "deepspeed"))
    optim = str(arguments.get("optim") or "")
    for prefix, package in OPTIMIZER_PACKAGES.items():
        if optim.startswith(prefix):
            needed.append((f"training.optim: {optim}", package))
            break
    for field_name, package in needed:
        if importlib.util.find_spec(package) is None:
            name = package.replace("_", "-")
            raise LlmkitError(f"recipe field `{field_name}` needs the `{name}` package: pip install {name}")


def argument_message(err: BaseException) -> str:
    """transformers' message folded onto one line, naming recipe fields (`--save_steps` → `training.save_steps`)."""
    import re

    lines = (line.strip() for line in str(err).splitlines())
    text = "; ".join(line.removeprefix("- ") for line in lines if line).replace(" found;", " found:")
    text = re.sub(r"\b[A-Z]\w+\.([A-Z][A-Z0-9_]*)\b", lambda match: match.group(1).lower(), text)  # enum members
    return re.sub(r"--([a-z][a-z0-9_]*)", r"`training.\1`", text)


class DivergenceGuard:
    """Stops training at the first step whose loss is not finite, whatever `logging_steps` is.

    Each training step's loss (the one the Trainer backpropagates, whoever computed it: the model or a task's
    loss function) is flagged on the device when not finite (no sync per micro-batch); the callback reads the
    flag once per optimizer step (reduced across processes, so all stop at the same step) and stops before
    that step is checkpointed."""

    def __init__(self) -> None:
        self.diverged_at: int | None = None
        self._flag: Any = None

    def watch(self, trainer: Any) -> None:
        """Wrap this trainer's `training_step` (an instance attribute: nothing else changes)."""
        step = trainer.training_step

        def checked_step(*args: Any, **kwargs: Any) -> Any:
            loss = step(*args, **kwargs)
            self._inspect(loss)
            return loss

        trainer.training_step = checked_step

    def _inspect(self, loss: Any) -> None:
        import torch

        if isinstance(loss, torch.Tensor):
            bad = ~torch.isfinite(loss.detach()).all()
            self._flag = bad if self._flag is None else self._flag | bad

    def diverged(self, args: Any) -> bool:
        import torch

        flag = self._flag if self._flag is not None else torch.tensor(False, device=args.device)
        self._flag = None
        if args.world_size > 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                tensor = flag.to(args.device, torch.int32).reshape(1)
                dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
                flag = tensor[0]
        return bool(flag.item())

    def callback(self) -> Any:
        from transformers import TrainerCallback

        owner = self

        class StopOnNonFiniteLoss(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if owner.diverged_at is None and owner.diverged(args):
                    owner.diverged_at = state.global_step
                    control.should_training_stop = True
                    control.should_save = False
                    control.should_evaluate = False

            def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
                loss = (logs or {}).get("loss")
                if loss is not None and not math.isfinite(loss) and owner.diverged_at is None:
                    owner.diverged_at = state.global_step
                    control.should_training_stop = True
                    control.should_save = False

        return StopOnNonFiniteLoss()


def weights_are_finite(model: Any) -> bool:
    """No NaN or infinity in any parameter (checked before the final save)."""
    import torch

    return all(bool(torch.isfinite(parameter).all()) for parameter in model.parameters())


def build_trainer(
    task: Task,
    recipe: Recipe,
    args: TrainingArguments,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prepared: Prepared,
    callbacks: list[Any] | None = None,
) -> Trainer:
    """The task's Trainer, whose loss is what one process over the whole batch would compute.

    With many processes (`average_tokens_across_devices`, on by default) the Trainer divides the loss by the
    token count of all processes and accumulation steps and multiplies it by the world size, when the
    model's `forward` takes `**kwargs`; that is right only for a loss that used the count. So: a loss over
    examples (one label or span each) is left a per-process mean with averaged gradients; a token-mean loss
    is the model's own where it uses the count (GPT-2), else computed from the logits (`TokenMeanCrossEntropy`:
    BERT's masked LM, T5, BART). In training, rank 0 says in one line how the run is spread (`launch.strategy`).
    """
    from transformers import TrainerCallback

    collator = task.collator(recipe, tokenizer, model)
    own_loss = task.loss_is_token_mean and loss_counts_tokens(model)
    # Decoder-only labels are shifted inside the model, so only its own loss can count them right; one that
    # does not use the count keeps a per-process mean (exact when every process has as many target tokens).
    from_logits = task.loss_is_token_mean and not own_loss and not is_decoder_only(model.config)
    if hasattr(collator, "on_epoch_begin"):  # a collator that draws per epoch (random masks) hears of each epoch

        class EpochToCollator(TrainerCallback):
            def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                collator.on_epoch_begin(args, state, control)

        callbacks = [*(callbacks or []), EpochToCollator()]
    trainer_class = task.trainer_class()
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=task.compute_metrics(recipe),
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics(),
        compute_loss_func=TokenMeanCrossEntropy(args.label_smoothing_factor) if from_logits else None,
        callbacks=callbacks,
    )
    if not own_loss:
        trainer.model_accepts_loss_kwargs = False
    if prepared.train is not None and trainer.is_world_process_zero():
        for line in strategy_lines(strategy(trainer), args):
            print(line, flush=True)
    return trainer


class StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM during training: finish the current step, save a checkpoint, stop.

    All processes of a multi-process run stop at the same step (the flag is reduced across them), so their
    collective checkpoint save cannot deadlock. A second Ctrl-C in a single process aborts at once.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: Any) -> None:
        if number == signal.SIGINT and self.signal == signal.SIGINT and "LOCAL_RANK" not in os.environ:
            raise KeyboardInterrupt
        self.signal = number

    def raise_if_signalled(self, folder: Any) -> None:
        """A signal that came after the last step: stop before the run is saved or swapped in."""
        if self.signal is not None:
            kept = f"the previous run in {folder.target} is untouched" if folder.replacing else "checkpoints are kept"
            raise Interrupted(
                f"stopped after training, before the final save; {kept} (run it again to finish)",
                signal_number=self.signal,
                resumable=False,
            )

    def callback(self) -> Any:
        from transformers import TrainerCallback

        owner = self

        class SaveAndStop(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if owner.requested(args):
                    owner.stopped_at = state.global_step
                    control.should_save = True
                    control.should_training_stop = True

        return SaveAndStop()

    def requested(self, args: Any) -> bool:
        """Whether any process got the signal (one all-reduce per step in a multi-process run)."""
        flag = self.signal is not None
        if args.world_size > 1:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                tensor = torch.tensor([int(flag)], device=args.device)
                dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
                flag = bool(tensor.item())
        return flag
