"""lm-evaluation-harness as a way in: the harness's own tasks, answered by a run's models with
retrieval in the loop. The only module that imports ``lm_eval``.

Importing it registers the model ``jmlr`` with lm-eval; ``jmlr lm-eval ARGS`` imports it and
runs lm-eval's command line with ARGS::

    jmlr lm-eval --model jmlr --model_args run=runs/demo,mode=trained \\
        --tasks medqa_4options --include_path my_tasks/ --output_path out/

    import jmlr.evaluation.harness, lm_eval       # in Python
    lm_eval.simple_evaluate(model="jmlr", model_args="run=runs/demo", tasks=[...])

Model arguments: ``run`` (a finished run folder; its ``config.yaml`` is the config), ``config``
(a YAML config, instead of or besides the run's), ``mode`` (``none``, ``frozen`` or ``trained``,
as ``jmlr evaluate``), ``passages`` (how many are read; default ``jmlr.r_read``), ``add_bos``
(``auto``: when the tokenizer starts texts with BOS, as training's prompts do; ``true``,
``false``), ``overrides`` (``section.key=value`` items separated by ``;``), ``batch_size``,
``device``, ``max_length`` (default ``generator.max_length``), ``query`` (``last_block``: the
question is the text after the context's last blank line, so that few-shot examples and a
task description are neither searched for nor separated from their question; ``all``).

What a request reads: its question (the task's prompt: question and options; with
``--num_fewshot`` or a description, the part after the last blank line) is the retriever's
query, searched in the run's index (``candidates.top_n``) and re-scored by the
mode's retriever (``trained``: the run's; ``frozen``: the one it started from). The best
``passages`` go right before the question as ``jmlr``'s prompt puts them ("Context:", the best
passage nearest the question, a blank line), cut evenly from their ends so that the longest
continuation of that context still fits ``max_length``. Every continuation of one context
reads the same passages. ``--apply_chat_template`` uses the generator's own chat template.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from jmlr.config import Config, load_config
from jmlr.data.schema import MCQ
from jmlr.device import resolve_device
from jmlr.errors import ConfigError
from jmlr.evaluation.scoring import right_pad
from jmlr.generation.prompts import fit_lengths, uses_bos

log = logging.getLogger(__name__)

MODES = ("none", "frozen", "trained")
QUERY = "{question}"            # the request's context is the whole query


def harness_config(run: str, config: str, overrides: str) -> tuple[Config, Path]:
    """The config (``config``, else the run's saved ``config.yaml``) with ``overrides``."""
    run_dir = Path(run).expanduser() if run else Path(".")
    source = config or (str(run_dir / "config.yaml") if run else "")
    if not source:
        raise ConfigError("jmlr model for lm-eval: give run=RUN (a trained run) or config=CONFIG")
    if not Path(source).expanduser().is_file():
        raise ConfigError(f"jmlr model for lm-eval: {source} does not exist")
    items = [item.strip() for item in overrides.split(";") if item.strip()]
    return load_config(source, items), run_dir


def question_part(context: str, query: str = "last_block") -> tuple[str, str]:
    r"""(what comes before the question, the question) of a request's context. With few-shot
    examples (lm-eval joins them with blank lines) or a task description before it, the
    question is the text after the last blank line; ``query="all"`` takes the whole context.

    >>> question_part("Q: a?\nAnswer: B\n\nQ: b?\nAnswer:")
    ('Q: a?\nAnswer: B\n\n', 'Q: b?\nAnswer:')
    >>> question_part("Q: b?\nAnswer:"), question_part("x\n\ny", "all")
    (('', 'Q: b?\nAnswer:'), ('', 'x\n\ny'))
    """
    if query == "all":
        return "", context
    head, sep, last = context.rpartition("\n\n")
    return (head + sep, last) if last.strip() else ("", context)


def passage_block(passages: Sequence[str]) -> str:
    """Passages (best first) as the text before the context, as jmlr's prompt lays them out.

    >>> print(passage_block(["Measles causes rash.", "Gout hurts."]), end="")
    Context:
    Gout hurts.
    Measles causes rash.
    <BLANKLINE>
    >>> passage_block([])
    ''
    """
    texts = [t for t in (" ".join(p.split()) for p in passages) if t]
    if not texts:
        return ""
    return "Context:\n" + "".join(f"{t}\n" for t in reversed(texts)) + "\n"


@register_model("jmlr")
class JmlrLM(TemplateLM):
    """A run's generator answering lm-eval requests, with its retriever in the loop."""

    def __init__(self, run: str = "", config: str = "", mode: str = "trained",
                 passages: int | str | None = None, add_bos: str | bool = "auto",
                 overrides: str = "", query: str = "last_block", batch_size: int | str = 8,
                 device: str | None = None, max_length: int | str | None = None,
                 **unused: Any) -> None:
        super().__init__()
        from jmlr.evaluation import passages as passages_mod
        from jmlr.evaluation.passages import check_run_dir

        mode = "none" if mode is None else str(mode)      # lm-eval reads "none" as None
        if mode not in MODES:
            raise ConfigError(f"jmlr model for lm-eval: mode must be one of {', '.join(MODES)}, "
                              f"got {mode!r}")
        cfg, run_dir = harness_config(str(run or ""), str(config or ""), str(overrides or ""))
        if mode == "trained":
            if not run:
                raise ConfigError("jmlr model for lm-eval: mode=trained needs run=RUN")
            check_run_dir(run_dir)
        if unused:
            log.info("jmlr model for lm-eval: ignoring %s", ", ".join(sorted(unused)))
        if query not in ("last_block", "all"):
            raise ConfigError(f"jmlr model for lm-eval: query must be last_block or all, got {query!r}")
        self.cfg, self.mode, self.run_dir, self.query = cfg, mode, run_dir, query
        wanted = str(device or cfg.run.device).split(":")[0]
        if wanted == "cuda" and not torch.cuda.is_available():
            # lm-eval's command line asks for cuda unless told otherwise
            log.warning("jmlr model for lm-eval: no CUDA device, running on %s",
                        resolve_device(cfg.run.device if cfg.run.device != "cuda" else "auto"))
            wanted = cfg.run.device if cfg.run.device != "cuda" else "auto"
        self.device_name = resolve_device(wanted)
        size = str(batch_size).split(":")[0]       # lm-eval may pass "auto" or "auto:4"
        self.batch_size_per_call = int(size) if size.isdigit() and int(size) > 0 else 8
        self.max_len = int(max_length or cfg.generator.max_length)
        self.n_read = 0 if mode == "none" else int(passages if passages not in (None, "")
                                                   else cfg.jmlr.r_read)
        self.model, self.tokenizer = passages_mod.load_eval_generator(
            cfg, run_dir, "trained" if mode == "trained" else "base", self.device_name)
        self.add_bos = uses_bos(self.tokenizer) if str(add_bos).lower() == "auto" \
            else str(add_bos).lower() in ("true", "1", "yes")
        self._passages: dict[str, list[str]] = {}
        self._chat_questions: dict[str, str] = {}     # rendered chat -> its last user message
        if self.n_read > 0:
            from jmlr.evaluation.passages import corpus_texts
            from jmlr.retrieval.backends import backend_for

            self.backend = backend_for(cfg)
            if not self.backend.index_exists(cfg):
                raise ConfigError(f"jmlr model for lm-eval: no index at {cfg.retriever.index_dir} "
                                  "(run `jmlr index`, or mode=none)")
            self.scorer = passages_mod.load_scorer(cfg, run_dir, mode, self.device_name)
            self.corpus = corpus_texts(cfg)

    # ------------------------------------------------------------------ what lm-eval asks

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if self.add_bos and bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.max_len

    @property
    def device(self) -> torch.device:
        return torch.device(self.device_name)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
                   ) -> list[int]:
        ids = list(self.tokenizer(string, add_special_tokens=False)["input_ids"])
        bos = self.tokenizer.bos_token_id
        wanted = self.add_bos if add_special_tokens is None else add_special_tokens
        if wanted and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "jmlr")).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        """``--apply_chat_template``: the generator's own chat template (instruct models)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError("jmlr model for lm-eval: the generator's tokenizer has no chat "
                              "template; leave out --apply_chat_template")
        rendered = self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        users = [m["content"] for m in chat_history if m.get("role") == "user"]
        if users:       # few-shot examples are earlier turns: the question is the last one
            self._chat_questions[rendered] = users[-1]
        return rendered

    def split(self, context: str) -> tuple[str, str, str]:
        """(before the question, the question, after it) of a request's context: in a chat
        rendered by :meth:`apply_chat_template`, the question is in the last user turn."""
        content = self._chat_questions.get(context)
        if content and content in context:
            at = context.rindex(content)
            head, question = question_part(content, self.query)
            return context[:at] + head, question, context[at + len(content):]
        head, question = question_part(context, self.query)
        return head, question, ""

    # ------------------------------------------------------------------ retrieval

    def retrieve(self, contexts: Sequence[str]) -> None:
        """Search and re-score once per distinct context (kept for later requests)."""
        from jmlr.evaluation.passages import rerank

        todo = [c for c in dict.fromkeys(contexts) if c not in self._passages]
        if not todo or self.n_read == 0:
            for c in todo:
                self._passages[c] = []
            return
        cfg = dataclasses.replace(self.cfg, retriever=dataclasses.replace(
            self.cfg.retriever, query_template=QUERY))
        questions = [MCQ(f"request{len(self._passages) + i}", self.split(c)[1], {}, "")
                     for i, c in enumerate(todo)]
        pool = self.backend.search(cfg, questions)
        ranked = rerank(self.scorer, questions, pool, self.corpus, cfg.eval.batch_size,
                        desc="rerank", template=QUERY)
        for context, q in zip(todo, questions, strict=True):
            ids = ranked[q.id].passage_ids[:self.n_read]
            self._passages[context] = [self.corpus[p] for p in ids]

    def with_passages(self, context: str, reserve: int) -> str:
        """``context`` with its passages right before the question (after any few-shot
        examples), cut to leave ``reserve`` tokens for the context and what follows it."""
        found = self._passages.get(context, [])
        if not found:
            return context
        head, question, tail = self.split(context)
        texts = [" ".join(p.split()) for p in found]
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        overhead = len(self.tok_encode(passage_block(["x"] * len(texts)))) - len(texts)
        caps = fit_lengths([len(i) for i in ids], self.max_len - reserve - overhead)
        kept = [self.tokenizer.decode(i[:cap]) for i, cap in zip(ids, caps, strict=True) if cap]
        return head + passage_block(kept) + question + tail

    def _read(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Each (context, continuation) with its context's passages before it."""
        self.retrieve([c for c, _ in pairs if c])
        longest: dict[str, int] = {}
        for context, continuation in pairs:
            n = len(self.tok_encode(context + continuation))
            longest[context] = max(longest.get(context, 0), n)
        return [(self.with_passages(c, longest[c]) if c else c, cont) for c, cont in pairs]

    # ------------------------------------------------------------------ scoring

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False
                      ) -> list[tuple[float, bool]]:
        read = self._read([tuple(r.args) for r in requests])
        shim = [_Request(pair) for pair in read]
        return super().loglikelihood(shim, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """Sum of the continuation's log-probabilities and whether greedy decoding gives it,
        in length-sorted batches (right padding)."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batches = [order[i:i + self.batch_size_per_call]
                   for i in range(0, len(order), self.batch_size_per_call)]
        for batch in tqdm(batches, desc="loglikelihood", disable=disable_tqdm, leave=False):
            seqs, spans = [], []
            for i in batch:
                _, context, continuation = requests[i]
                whole = (context + continuation)[-(self.max_len + 1):]
                seqs.append(whole[:-1])
                spans.append(len(continuation))
            ids, mask = right_pad(seqs, pad)
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device),
                                    attention_mask=mask.to(self.device)).logits.float()
            for row, i in enumerate(batch):
                _, _, continuation = requests[i]
                end = len(seqs[row])
                logprobs = F.log_softmax(logits[row, end - spans[row]:end], dim=-1).cpu()
                target = torch.tensor(continuation[-spans[row]:])
                chosen = logprobs.gather(-1, target[:, None]).squeeze(-1)
                greedy = bool((logprobs.argmax(-1) == target).all())
                results[i] = (float(chosen.sum()), greedy)
        return [r for r in results if r is not None]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood in windows of ``max_length`` (no retrieval: there is no
        question to retrieve for)."""
        out = []
        for request in tqdm(requests, desc="loglikelihood_rolling", disable=disable_tqdm):
            (text,) = request.args[:1]
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.tok_encode(text, add_special_tokens=False), self.prefix_token_id,
                self.max_len, context_len=1)]
            scored = self._loglikelihood_tokens([((text, ""), ctx, cont) for ctx, cont in windows],
                                                disable_tqdm=True)
            out.append(sum(score for score, _ in scored))
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first stop string."""
        read = self._read([(r.args[0], "") for r in requests])
        out = []
        for (context, _), request in tqdm(list(zip(read, requests, strict=True)),
                                          desc="generate_until", disable=disable_tqdm):
            kwargs = dict(request.args[1]) if len(request.args) > 1 else {}
            until = kwargs.pop("until", None) or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            new_tokens = int(kwargs.pop("max_gen_toks", 256))
            ids = self.tok_encode(context)[-(self.max_len - new_tokens):]
            with torch.no_grad():
                made = self.model.generate(
                    input_ids=torch.tensor([ids], device=self.device),
                    attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=self.device),
                    max_new_tokens=new_tokens, do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id or self.eot_token_id)
            text = self.tok_decode(made[0, len(ids):].tolist())
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            out.append(text)
        return out


def write_mcq_task(folder: str | Path, questions: Sequence[MCQ], name: str) -> Path:
    """An lm-eval multiple-choice task over ``questions`` in ``folder`` (``NAME.yaml`` and the
    jsonl it reads), with ``jmlr``'s own prompt (question, options, "Answer:") and the letters
    as choices (" B" after it): what ``jmlr evaluate`` scores by letter, asked through the
    harness. Returns the folder, for lm-eval's ``--include_path``."""
    import json

    from jmlr.generation import prompts

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = (folder / f"{name}.jsonl").resolve()
    data.write_text("".join(json.dumps({
        "id": q.id, "prompt": prompts.build_prompt(q, []), "letters": list(q.options),
        "answer_index": list(q.options).index(q.answer)}) + "\n" for q in questions),
        encoding="utf-8")
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{prompt}}'\n"
        "doc_to_choice: letters\ndoc_to_target: answer_index\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8")
    return folder


@dataclasses.dataclass
class _Request:
    """What ``TemplateLM.loglikelihood`` reads of an lm-eval Instance: its ``args``."""

    args: tuple[str, str]


def run_harness_cli(cfg: Any, args: Any) -> int:
    """``jmlr lm-eval ARGS``: lm-eval's own command line, with the ``jmlr`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    harness_args = list(args.passthrough)
    if harness_args and harness_args[0] == "--":
        harness_args = harness_args[1:]
    saved = sys.argv
    sys.argv = ["lm_eval", *harness_args]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
