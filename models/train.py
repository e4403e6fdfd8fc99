"""Train the small language models shipped in ``models/``, on the project's own generated tasks.

    .venv/bin/python models/train.py gpt2-ioi-gt      # or llama-ioi-gt; --out FOLDER, --steps N
    .venv/bin/python models/train.py all

Each model is a Hugging Face checkpoint (``config.json``, ``model.safetensors``,
``tokenizer.json``) with a model card (``README.md``) and ``training.json``
(the tasks it was trained on, its measured accuracy and the command). Training
is seeded and deterministic for a given thread count (``--threads``, 2 by
default; the committed models were trained with 2).

The tokenizer is our own word-level one rather than GPT-2's BPE: the task
vocabulary is a few hundred words, and GPT-2's 50,257-row embedding alone would
be 12.9 MB per model at width 64 (the shipped models must total at most 20 MB).
It splits digit runs into pairs, so "1732" is "17" "32" exactly as in GPT-2's
BPE, which the greater-than task relies on; words carry no leading space
(" Mary" and "Mary" are the same token).

Data: IOI prompts from the training templates only (the four held-out
templates, ``prune.tasks.IOI_TEMPLATES["test"]``, are never seen) followed by
the indirect object; greater-than prompts followed by an end year drawn
uniformly above the start year. Loss: next-token cross-entropy over every
token of prompt and answer, plus the answer token's cross-entropy again, so
the answer weighs as much as the rest of the sequence together.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
EOS, UNK = "<|endoftext|>", "<unk>"
# Digit runs split in pairs first, then words and single punctuation marks.
PAIR_DIGITS = r"\d\d"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One shipped model: architecture, sizes and training schedule."""

    name: str
    architecture: str  # "gpt2" or "llama"
    d_model: int = 64
    n_layers: int = 3
    n_heads: int = 4
    n_kv_heads: int = 4  # llama only: grouped-query attention when < n_heads
    d_mlp: int = 256
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    tasks: tuple[str, ...] = ("ioi", "greater_than")
    n_train: int = 20000  # prompts per task in the training pool


RECIPES = {
    r.name: r
    for r in (
        Recipe(name="gpt2-ioi-gt", architecture="gpt2"),
        Recipe(name="llama-ioi-gt", architecture="llama", n_kv_heads=2, d_mlp=172),
    )
}


# ------------------------------------------------------------------ tokenizer
def task_words() -> list[str]:
    """Every word the IOI and greater-than prompts use, held-out templates included."""
    from prune import tasks

    text = " ".join([
        *tasks.MALE_NAMES, *tasks.FEMALE_NAMES, *tasks.PLACES, *tasks.OBJECTS, *tasks._GT_NOUNS,
        *(t for t in tasks._IOI_BASE), *tasks._GT_TEMPLATES, "Then",
    ])
    text = re.sub(r"\{[A-Za-z]+\}", " ", text)
    words = re.findall(r"\w+|[^\w\s]", text)
    return sorted({w for w in words if not w.isdigit()})


def build_tokenizer():
    """The word-level tokenizer: EOS (also BOS and padding), UNK, "00" … "99", then the task words."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = [EOS, UNK, *(f"{i:02d}" for i in range(100)), *task_words()]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAIR_DIGITS), behavior="isolated"),
        pre_tokenizers.Whitespace(),
    ])
    # Every sequence starts with EOS as its beginning-of-text token, as GPT-2 was trained.
    tok.post_processor = processors.TemplateProcessing(single=f"{EOS} $A", special_tokens=[(EOS, 0)])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   unk_token=UNK, model_max_length=64)


# ---------------------------------------------------------------------- data
def training_pool(tokenizer, recipe: Recipe, seed: int):
    """Training prompts per task: ``(ids [N, S], answer position [N], answers)``.

    IOI answers are fixed (the indirect object); greater-than answers are
    drawn afresh each step from the years above the start year.
    """
    from prune import tasks

    pool = {}
    if "ioi" in recipe.tasks:
        t = tasks.ioi(tokenizer, recipe.n_train, seed=seed, templates="train")
        pool["ioi"] = (t.examples.clean, t.examples.answer.long().argmax(-1), t.correct)
    if "greater_than" in recipe.tasks:
        t = tasks.greater_than(tokenizer, recipe.n_train, seed=seed + 1)
        pool["greater_than"] = (t.examples.clean, t.examples.answer.long().argmax(-1),
                                (t.year_tokens, t.threshold))
    return pool


def batch(pool, recipe: Recipe, gen: torch.Generator, pad: int):
    """One training batch, half from each task: ``ids [B, S+1]`` with the answer appended, ``loss weights``."""
    rows, per = [], recipe.batch_size // len(pool)
    for name, (ids, at, answers) in pool.items():
        pick = torch.randint(len(ids), (per,), generator=gen)
        if name == "greater_than":
            years, threshold = answers
            yy = threshold[pick]
            # Uniform over the years above YY (YY is at most 98).
            end = yy + 1 + (torch.rand(per, generator=gen) * (99 - yy)).long()
            answer = years[end]
        else:
            answer = answers[pick]
        rows.append((ids[pick], at[pick], answer))
    S = max(r[0].shape[1] for r in rows) + 1
    out = torch.full((per * len(rows), S), pad, dtype=torch.long)
    weight = torch.zeros(per * len(rows), S - 1)
    i = 0
    for ids, at, answer in rows:
        for j in range(len(ids)):
            n = int(at[j]) + 1
            out[i, :n] = ids[j, :n]
            out[i, n] = answer[j]
            weight[i, : n] = 1.0 / n  # every next-token prediction of the sequence, together weight 1
            weight[i, n - 1] += 1.0   # and the answer once more
            i += 1
    return out, weight


# --------------------------------------------------------------------- model
def hf_model(recipe: Recipe, vocab_size: int):
    import transformers

    torch.manual_seed(recipe.seed)
    if recipe.architecture == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=vocab_size, n_positions=64, n_embd=recipe.d_model, n_layer=recipe.n_layers,
            n_head=recipe.n_heads, n_inner=recipe.d_mlp, activation_function="gelu_new",
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        )
        return transformers.GPT2LMHeadModel(cfg)
    if recipe.architecture == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=vocab_size, hidden_size=recipe.d_model, intermediate_size=recipe.d_mlp,
            num_hidden_layers=recipe.n_layers, num_attention_heads=recipe.n_heads,
            num_key_value_heads=recipe.n_kv_heads, max_position_embeddings=64, rms_norm_eps=1e-5,
            tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )
        return transformers.LlamaForCausalLM(cfg)
    raise ValueError(f"architecture {recipe.architecture!r}: choose 'gpt2' or 'llama'")


def train(recipe: Recipe, *, quiet: bool = False):
    """Train ``recipe``; returns ``(hf_model, tokenizer, log)``."""
    from tqdm import tqdm

    tokenizer = build_tokenizer()
    pool = training_pool(tokenizer, recipe, seed=recipe.seed)
    model = hf_model(recipe, len(tokenizer))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98))

    def lr_at(step):  # linear warmup, then cosine to a tenth
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(recipe.seed)
    log, start = [], time.perf_counter()
    bar = tqdm(range(recipe.steps), desc=recipe.name, disable=quiet, mininterval=2)
    for step in bar:
        ids, weight = batch(pool, recipe, gen, tokenizer.pad_token_id)
        logits = model(input_ids=ids[:, :-1]).logits  # [B, S, V]
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        loss = (ce.view_as(weight) * weight).sum() / len(ids)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{recipe.name}: loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == recipe.steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4)})
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model, tokenizer, {"seconds": round(time.perf_counter() - start, 1), "log": log}


# ---------------------------------------------------------------- evaluation
HELD_OUT_SEED = 1_000_003  # never a training seed


@torch.no_grad()
def evaluate(folder: Path, n: int = 500, seed: int = HELD_OUT_SEED) -> dict:
    """Accuracy and metric per task through the project's own loader, on freshly generated prompts.

    IOI on the held-out templates; greater-than on fresh prompts (the task has three templates, all trained).
    """
    from transformers import AutoTokenizer

    from prune import loaders, tasks

    model = loaders.from_hf(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    recorded = json.loads((folder / "training.json").read_text())["tasks"] if (folder / "training.json").is_file() \
        else list(RECIPES[folder.name].tasks)
    out = {}
    for name in recorded:
        kwargs = {"templates": "test"} if name == "ioi" else {}
        task = tasks.make_task(name, tokenizer, n, seed, **kwargs)
        ex = task.examples
        logits = model(ex.clean, attention_mask=ex.valid)
        row = {"examples": n, "seed": seed, "accuracy": round(tasks.accuracy(logits, task), 4)}
        if name == "greater_than":
            row["probability_difference"] = round(tasks.probability_difference(logits, task), 4)
        else:
            row["logit_difference"] = round(tasks.logit_difference(logits, task), 4)
            row["templates"] = "test (held out)"
        out[name] = row
    return out


# -------------------------------------------------------------------- saving
def _card(recipe: Recipe, model, info: dict, scores: dict, command: str) -> str:
    n_params = sum(p.numel() for p in model.parameters())
    lines = [
        "---", "library_name: transformers", "license: mit",
        f"tags: [{recipe.architecture}, circuits, ioi, greater-than]", "---", "", f"# {recipe.name}", "",
        f"A {'GPT-2' if recipe.architecture == 'gpt2' else 'Llama'}-architecture language model "
        f"trained from scratch on the project's generated IOI and Greater-Than prompts, so that circuit discovery "
        f"has a model that has learned its task. Not a general language model.", "",
        "## Architecture", "",
        f"- {recipe.architecture}, {recipe.n_layers} layers, width {recipe.d_model}, {recipe.n_heads} heads"
        + (f" ({recipe.n_kv_heads} key-value heads, grouped-query attention)" if recipe.architecture == "llama"
           and recipe.n_kv_heads != recipe.n_heads else "")
        + f", MLP width {recipe.d_mlp}, {n_params:,} parameters, float32.",
        f"- Tokenizer: word-level, {info['vocab_size']} tokens (`tokenizer.json`); digit runs split in pairs "
        f"(\"1732\" -> \"17\" \"32\"), every sequence starts with `<|endoftext|>`.", "",
        "## Training", "",
        f"- Data: `prune.tasks.ioi` (training templates only; the 4 held-out templates never seen) and "
        f"`prune.tasks.greater_than`, {recipe.n_train:,} prompts each (seeds {recipe.seed} and {recipe.seed + 1}); "
        f"IOI answered with the indirect object, greater-than with an end year drawn uniformly above the start year.",
        "- Loss: next-token cross-entropy over every token, plus the answer token's once more.",
        f"- {recipe.steps} steps, batch {recipe.batch_size} (half per task), AdamW (lr {recipe.lr}, betas 0.9/0.98, "
        f"weight decay {recipe.weight_decay} on matrices), {recipe.warmup} warmup steps then cosine to a tenth, "
        f"gradient clipping at 1, seed {recipe.seed}.",
        f"- {info['seconds']} s on {info['threads']} CPU threads ({info['machine']}).", "",
        "## Evaluation (held out)", "",
        "Measured through `prune.loaders.from_hf` on freshly generated prompts (seed "
        f"{HELD_OUT_SEED}, 500 each):", "",
    ]
    for name, row in scores.items():
        metric = "probability difference" if name == "greater_than" else "logit difference IO - S"
        value = row.get("probability_difference", row.get("logit_difference"))
        where = "held-out templates" if name == "ioi" else "fresh prompts"
        lines.append(f"- `{name}` ({where}): accuracy {row['accuracy']:.3f}, mean {metric} {value:.3f}.")
    lines += ["", "## Reproduce", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def save(recipe: Recipe, model, tokenizer, info: dict, out: Path, command: str) -> dict:
    """Write the checkpoint into ``out`` (a fresh temporary folder renamed into place: nothing partial)."""
    import shutil
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for extra in ("generation_config.json",):
            (tmp / extra).unlink(missing_ok=True)
        record = {"name": recipe.name, "tasks": list(recipe.tasks), "recipe": dataclasses.asdict(recipe),
                  "command": command, **info}
        (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        scores = evaluate(tmp)
        record["held_out"] = scores
        (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        (tmp / "README.md").write_text(_card(recipe, model, info, scores, command))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def machine() -> str:
    """The CPU's model name (Linux) or the architecture."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", help=f"one of {', '.join(RECIPES)}, or 'all'")
    p.add_argument("--out", type=Path, help="folder to write (default: models/NAME); with 'all', its parent")
    p.add_argument("--steps", type=int, help="override the recipe's steps (a quick trial)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    names = list(RECIPES) if args.name == "all" else [args.name]
    for name in names:
        if name not in RECIPES:
            print(f"train.py: unknown model {name!r}; choose one of {', '.join(RECIPES)} or 'all'", file=sys.stderr)
            return 2
    if args.steps is not None and args.steps < 1:
        print(f"train.py: --steps {args.steps} must be a positive integer", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    random.seed(0)
    for name in names:
        recipe = RECIPES[name]
        if args.steps is not None:
            recipe = dataclasses.replace(recipe, steps=args.steps)
        out = (args.out / name if args.name == "all" else args.out) if args.out else HERE / name
        model, tokenizer, info = train(recipe, quiet=args.quiet)
        info.update(threads=args.threads, machine=machine(),
                    vocab_size=len(tokenizer), torch=torch.__version__)
        command = f".venv/bin/python models/train.py {name}" + (f" --steps {args.steps}" if args.steps else "")
        record = save(recipe, model, tokenizer, info, out, command)
        print(json.dumps({"model": str(out), "seconds": info["seconds"], "held_out": record["held_out"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
