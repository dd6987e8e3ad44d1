"""HafTrainer: `transformers.Trainer` with the hybrid objective and hafrm's model folder format.

The Trainer owns the loop (accumulation, scheduling, checkpoints, best-model tracking, resume,
progress bar); this subclass only says how to compute the loss, how to evaluate, and how to
save/load a `HybridRewardModel`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_callback import ExportableState
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from hafrm import distributed
from hafrm.config import HafConfig
from hafrm.data.tokenize import TokenizedPair
from hafrm.errors import DivergedError
from hafrm.evaluation.evaluate import EvalResult, evaluate_pairs
from hafrm.modeling.hybrid import HybridRewardModel
from hafrm.objectives.haf import HybridObjective, step_metrics
from hafrm.training.checkpoints import (
    STAGING_PREFIX,
    TRAINER_STATE_NAME,
    ResumableLengthGroupedSampler,
    checkpoint_sizes,
    last_checkpoint,
)

log = logging.getLogger(__name__)
TRAINING_ARGS_NAME = "training_args.json"  # the Trainer writes a pickle (training_args.bin); hafrm JSON
OBJECTIVE_STATE_NAME = "objective_state.json"  # in a checkpoint: the running means of `alpha: auto`
SAMPLER_STATE_NAME = "sampler_state.pt"  # in a checkpoint: the RNG state the epoch's batch order was drawn from


class HafTrainer(Trainer):
    def __init__(
        self,
        *args: Any,
        train_config: HafConfig,
        eval_pairs: list[TokenizedPair],
        eval_features: list[dict[str, Any]],
        pad_token_id: int,
        model_card: dict[str, Any],
        bf16_steps: bool = False,
        train_pairs: list[TokenizedPair] | None = None,  # the training set, to name a diverged batch's pairs
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.train_config = train_config
        self.objective = HybridObjective(train_config)
        self.eval_pairs = eval_pairs
        self.eval_features = eval_features
        self.pad_token_id = pad_token_id
        self.model_card = model_card
        self.bf16_steps = bf16_steps
        self.train_pairs = train_pairs
        self._train_metrics: dict[str, list[float]] = defaultdict(list)
        self._step_pairs: list[int] = []  # the training pairs of the micro-batches since the last optimizer step
        self._sampler: ResumableLengthGroupedSampler | None = None  # set with the training dataloader
        self.eval_history: dict[int, EvalResult] = {}  # step -> eval of that step's weights
        self.selected_step: int | None = None  # the step whose weights the run ends with

    def create_optimizer(self, model: torch.nn.Module | None = None):
        """AdamW with the reward head in its own group (it may take a higher learning rate)."""
        if self.optimizer is None:
            model = self.model
            head = list(model.reward_head.parameters())
            head_ids = {id(p) for p in head}
            body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
            cfg = self.train_config
            groups = [
                {"params": body, "weight_decay": cfg.weight_decay},
                {"params": head, "weight_decay": 0.0, "lr": cfg.reward_head_learning_rate or cfg.learning_rate},
            ]
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        progress = self.state.global_step / max(1, self.state.max_steps - 1) if model.training else None
        # Training steps in bf16 autocast where asked (the reward head and losses stay fp32 inside);
        # evaluation runs in fp32, so it equals a later `hafrm eval` of the saved model. (The
        # Trainer's own `bf16=True` would wrap the model's forward in autocast for good.)
        with torch.autocast(self.args.device.type, torch.bfloat16, enabled=self.bf16_steps and model.training):
            parts = self.objective(model, inputs, progress=progress)  # the forward, then the loss parts
        if model.training:
            self._step_pairs += inputs["index"].tolist()
            if not torch.isfinite(parts.loss.detach()):
                raise self._diverged(f"the loss is {parts.loss.item()}", inputs["index"].tolist())
        for k, v in step_metrics(parts).items():
            self._train_metrics[k].append(v)
        return (parts.loss, parts) if return_outputs else parts.loss

    def _get_grad_norm(self, model, grad_norm=None):
        """The Trainer's gradient norm, checked before the optimizer step: a NaN or inf stops the run
        there, so the weights and the checkpoints on disk stay as they were."""
        norm = super()._get_grad_norm(model, grad_norm)
        pairs, self._step_pairs = self._step_pairs, []
        if not math.isfinite(float(norm)):
            raise self._diverged(f"the gradient norm is {float(norm)}", pairs)
        return norm

    def _diverged(self, what: str, indices: list[int]) -> DivergedError:
        """The one-line error of a diverged step: the step, what was not finite, and the batch's pairs."""
        pairs = [self.train_pairs[i] for i in indices] if self.train_pairs else []
        where = [p.origin or f"{p.source or 'data'} pair #{p.index}" for p in pairs[:8]]
        more = f" and {len(pairs) - 8} more" if len(pairs) > 8 else ""
        last = last_checkpoint(self.args.output_dir)
        kept = f"; the last checkpoint, {last}, is untouched" if last else "; no checkpoint was written yet"
        return DivergedError(
            f"training diverged at step {self.state.global_step + 1}: {what} on the batch of pairs "
            f"{', '.join(where)}{more}{kept} (try a lower --learning-rate or --max-grad-norm)"
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs carry the mean of the step metrics since the last log (TRL's habit).
        # With several processes, the means of every rank's (as the Trainer's own `loss` is).
        if "loss" in logs and not any(k.startswith("eval_") for k in logs):
            means = {k: sum(v) / len(v) for k, v in self._train_metrics.items() if k != "loss" and v}
            ranks = distributed.gather_lists([means])
            for k in means:
                logs[k] = sum(r[k] for r in ranks if k in r) / sum(1 for r in ranks if k in r)
            self._train_metrics.clear()
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        result = evaluate_pairs(self.model, self.train_config, self.eval_pairs, self.eval_features, self.pad_token_id)
        self.eval_history[self.state.global_step] = result
        metrics = {
            f"{metric_key_prefix}_{k}": v for k, v in result.metrics.items() if not k.startswith(("tag/", "subset/"))
        }
        metrics[f"{metric_key_prefix}_step"] = float(self.state.global_step)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # persistence: hafrm's folder format instead of a bare state dict --------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Rank 0 writes the folder; under ZeRO-3 or FSDP from the `state_dict` the Trainer gathered
        from the shards (the reward head's included), else from the model's own weights."""
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        if state_dict is not None and not state_dict:  # ZeRO-3 without gathering: DeepSpeed writes its shards
            log.warning("%s: ZeRO-3 saves its own shards here (stage3_gather_16bit_weights_on_model_save is off); "
                        "gather them with DeepSpeed's zero_to_fp32.py", output_dir)  # fmt: skip
            return
        model: HybridRewardModel = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(output_dir, model_card=self.model_card, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        with open(os.path.join(output_dir, TRAINING_ARGS_NAME), "w") as f:
            f.write(self.args.to_json_string())

    def final_eval(self) -> EvalResult:
        """The eval of the weights the run ends with (the kept best, or the last step)."""
        best = self.state.best_model_checkpoint if self.args.load_best_model_at_end else None
        step = int(os.path.basename(best).split("-")[-1]) if best else self.state.global_step
        if step not in self.eval_history:  # e.g. resumed past it, or the last step was not evaluated
            self.evaluate()
            step = self.state.global_step
        self.selected_step = step
        return self.eval_history[step]

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written whole or not at all: everything goes into
        `.tmp-checkpoint-N` (trainer_state.json last), which is renamed to `checkpoint-N` when
        complete, so a process killed mid-save leaves the previous checkpoints as they were (and a
        staging folder the next save removes). The steps are the Trainer's own, in its order."""
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final, staging = os.path.join(run_dir, name), os.path.join(run_dir, STAGING_PREFIX + name)
        if self.args.should_save:
            for stale in Path(run_dir).glob(f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-*"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a save that was killed
        self.accelerator.wait_for_everyone()
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        self.save_model(staging, _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(staging)
            self._save_scaler(staging)
            self._save_rng_state(staging)
        if self.state.best_global_step:
            best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            if self.state.best_global_step == self.state.global_step or os.path.isdir(best):
                self.state.best_model_checkpoint = best  # its final name, this one's included
        self.accelerator.wait_for_everyone()  # every rank's files (RNG states) are in the staging folder
        if self.args.should_save:
            for cb in [c for c in [*self.callback_handler.callbacks, self.control] if isinstance(c, ExportableState)]:
                states = self.state.stateful_callbacks
                name_ = cb.__class__.__name__
                states[name_] = [*states[name_], cb.state()] if isinstance(states.get(name_), list) else cb.state()
            self.state.save_to_json(os.path.join(staging, TRAINER_STATE_NAME))
            if os.path.isdir(final):  # the same step saved before (a run resumed from an older one)
                shutil.rmtree(final)
            os.replace(staging, final)
            log.info("%s written: %s", final, checkpoint_sizes(final))
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _get_train_sampler(self, train_dataset=None):
        """The Trainer's length-grouped sampler, resumable, grouping by the global batch: every rank
        draws the same order, and accelerate hands rank r the r-th share of each global batch, so
        a step sees the pairs one process with the whole batch would see."""
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            global_batch = sampler.batch_size * self.args.world_size  # the Trainer's is one rank's
            sampler = ResumableLengthGroupedSampler(global_batch, lengths=sampler.lengths)
            self._sampler = sampler
        return sampler

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        sampler = self._sampler
        if sampler is not None and sampler.drawn is not None and self.args.should_save:
            torch.save(sampler.drawn, os.path.join(output_dir, SAMPLER_STATE_NAME))
        auto = self.objective.auto_alpha
        if auto is not None and self.args.should_save:
            with open(os.path.join(output_dir, OBJECTIVE_STATE_NAME), "w") as f:
                json.dump({"auto_alpha": auto.state_dict()}, f)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        sampler = self._sampler  # made with the dataloader, before this is called
        drawn = os.path.join(checkpoint, SAMPLER_STATE_NAME) if checkpoint else None
        if sampler is not None and drawn and os.path.isfile(drawn):
            sampler.redraw = torch.load(drawn, weights_only=True)
        path = os.path.join(checkpoint, OBJECTIVE_STATE_NAME) if checkpoint else None
        if self.objective.auto_alpha is not None and path and os.path.isfile(path):
            with open(path) as f:
                self.objective.auto_alpha.load_state_dict(json.load(f)["auto_alpha"])

    def _load_best_model(self) -> None:
        self.accelerator.unwrap_model(self.model).load_weights(self.state.best_model_checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        (model or self.accelerator.unwrap_model(self.model)).load_weights(resume_from_checkpoint)
