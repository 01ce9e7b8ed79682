"""The ``pare`` command: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from pare.errors import PareError


def _cmd_run(args) -> None:
    from pare.recipes import load_recipe
    from pare.recipes.runner import run
    from pare.reporting import print_summary

    recipe = load_recipe(args.recipe)
    out = Path(args.out or Path("runs") / recipe.name)
    results = run(recipe, out, resume=args.resume, overwrite=args.overwrite)
    print_summary(results)
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.html'} ({out / 'report.md'})")


def _cmd_recipes(args) -> None:
    import yaml

    from pare.recipes import builtin_recipes

    for name, path in builtin_recipes().items():
        description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        print(f"{name:20s} {description}")


def _cmd_validate(args) -> None:
    from pare.errors import ConfigError
    from pare.recipes import load_recipe
    from pare.recipes.pipeline import recipe_model, recipe_splits
    from pare.recipes.runner import check_out

    recipe = load_recipe(args.recipe)
    check_out(Path(args.out or Path("runs") / recipe.name))
    # what `pare run` does before it trains: load and split the data, build the model once and
    # run a batch of two through it (shapes, classes, vocabulary, size)
    split = recipe_splits(recipe)[0]
    # what a stage's settings cannot do for this task (known once the data is): e.g. CRD for a language model
    problems = [
        f"stages[{i}].{p}"
        for i, s in enumerate(recipe.stages)
        for p in (s.config.task_problems(split.kind) if hasattr(s.config, "task_problems") else [])
    ]
    if problems:
        raise ConfigError(problems, args.recipe)
    built = recipe_model(recipe, split)
    params = sum(p.numel() for p in built.parameters())
    model = recipe.model.name or recipe.model.factory or recipe.model.hf or recipe.model.gguf
    stages = ", ".join(f"{s.name} ({s.technique})" for s in recipe.stages) or "none"
    print(
        f"{args.recipe}: valid. data={recipe.data.source} ({split.kind}, {split.sizes()}), "
        f"model={model} ({params:,} parameters), stages: {stages}"
    )
    if recipe.model.pretrained:
        from pare.models.hf import load_tokenizer, source

        tokenizer = load_tokenizer(*source(recipe.model))
        trained = f"trained {recipe.train.epochs} epochs" if recipe.train.epochs else "as loaded, not trained"
        print(
            f"task: {split.kind}; tokenizer: the model's own ({type(tokenizer).__name__}, "
            f"{len(tokenizer):,} tokens); baseline: {trained}"
        )
    _warn_unsafe_channels(recipe, built, split)


def _warn_unsafe_channels(recipe, model, split) -> None:
    """Channel groups a structured prune stage will leave alone, named before anything trains."""
    from pare.techniques.prune.apply import unsafe_channels

    for i, s in enumerate(recipe.stages):
        if s.technique != "prune" or s.config.method != "structured":
            continue
        for reason, channels in unsafe_channels(model, s.config, split).items():
            if reason != "reaches the model output":  # the outputs (classes) are never pruned
                print(f"warning: stages[{i}] ({s.name}): {channels} channels will be left alone: {reason}")


def _cmd_generate(args) -> None:
    from pare.errors import ConfigError
    from pare.export.onnx_lm import STAGE_GRAPH, OrtCausalLM
    from pare.generate import DEFAULT_PROMPTS, causal_backbone, greedy
    from pare.models.hf import CausalLM, load_tokenizer, source
    from pare.recipes.pipeline import stage_model

    folder = Path(args.stage)
    # a folder written by `pare checkpoint --format onnx`
    if (folder / "model.onnx").exists() and (folder / "config.json").exists():
        model, tokenizer = CausalLM(OrtCausalLM(folder / "model.onnx")), load_tokenizer(folder)
        name, runtime, prompts = folder.name, "onnxruntime", args.prompt or list(DEFAULT_PROMPTS)
    else:
        model, recipe, name = stage_model(folder)
        if causal_backbone(model) is None:
            raise ConfigError(
                f"{args.stage}: stage {name!r} is not a pretrained causal LM (model.hf or model.gguf); "
                f"pare generate continues prompts with those"
            )
        tokenizer = load_tokenizer(*source(recipe.model))
        runtime, prompts = "torch", args.prompt or recipe.evaluate.prompts
        if (folder / STAGE_GRAPH).exists():  # the stage ships its ONNX graph: run what ships
            model, runtime = CausalLM(OrtCausalLM(folder / STAGE_GRAPH)), "onnxruntime"
    for prompt in prompts:
        g = greedy(model, tokenizer, prompt, args.max_new_tokens)
        speed = g["decode_tokens_per_s"]
        print(f"[{name}, {runtime}] {prompt}{g['text']}")
        print(
            f"  {g['prompt_tokens']} prompt tokens in {g['prefill_ms']:.0f} ms; {g['new_tokens']} new tokens"
            + ("" if speed is None else f" at {speed:.1f} tokens/s")
            + f" ({g['threads']} threads)"
        )


def _cmd_checkpoint(args) -> None:
    from pare.recipes.checkpoint import stage_checkpoint

    out = Path(args.out)
    name, size = stage_checkpoint(Path(args.stage), out, args.format, args.accuracy_level)
    loader = (
        f"ONNX Runtime runs model.onnx (pare generate {out})"
        if args.format == "onnx"
        else "transformers loads it with from_pretrained"
    )
    print(f"stage {name!r} written to {out} ({size / 1e6:.1f} MB): {loader}")


def _cmd_lr_find(args) -> None:
    from pare.errors import ConfigError
    from pare.io import atomic_write_json
    from pare.recipes import load_recipe
    from pare.recipes.pipeline import recipe_model, recipe_splits
    from pare.reporting.plots import lr_find_plot
    from pare.training import lr_find

    recipe = load_recipe(args.recipe)
    split = recipe_splits(recipe)[0]
    if split.kind != "classification":
        raise ConfigError(
            f"lr-find trains with cross-entropy and needs a classification task; {args.recipe} is {split.kind}"
        )
    model = recipe_model(recipe, split)
    result = lr_find(model, split.train, recipe.train, steps=args.steps, seed=recipe.seed)
    out = Path(args.out or Path("runs") / f"{recipe.name}-lr-find")
    plot = lr_find_plot(result, out / "lr_find.png")
    atomic_write_json(out / "lr_find.json", result)
    suggestion = result["suggested_lr"]
    print(
        f"suggested learning rate: {suggestion:.3g}" if suggestion else "no clear suggestion (too few steps)"
    )
    print(f"plot: {plot}")


def _cmd_report(args) -> None:
    from pare.io import read_results
    from pare.reporting import print_summary, write_report

    path = Path(args.dir) / "results.json"
    results = read_results(path)
    try:
        paths = write_report(results, args.dir)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise PareError(
            f"{path}: a stage record is damaged or from another pare version ({type(e).__name__}: {e}); "
            f"re-run the recipe to rebuild it"
        ) from None
    print_summary(results)
    print(f"report: {paths['html']}")


def _cmd_techniques(args) -> None:
    from pare.registry import techniques

    found = techniques()
    if not found:
        print("no techniques registered yet")
    for name, t in found.items():
        print(f"{name:12s} {t.description.splitlines()[0] if t.description else ''}")


def _cmd_estimate_memory(args) -> None:
    from rich.table import Table

    from pare.estimate.training import TrainSetup, estimate_training_memory, measure_training_memory
    from pare.estimate.workloads import hf_workload, recipe_workload
    from pare.progress import console
    from pare.reporting.format import fmt_bytes

    if args.hf:
        workload = hf_workload(args.hf, seq_len=args.seq_len or 128)
    else:
        from pare.recipes import load_recipe

        workload = recipe_workload(load_recipe(args.recipe), seq_len=args.seq_len)
    setup = TrainSetup(
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        precision=args.precision,
        checkpointing=args.checkpointing,
        lora_rank=args.lora_rank,
    )
    est = estimate_training_memory(workload, setup, kv_cache=args.kv_cache)
    measured = measure_training_memory(workload, setup) if args.measure else None
    table = Table(
        title=f"training memory: {workload.name}, batch {args.batch_size}, {args.optimizer}, {args.precision}"
    )
    table.add_column("component")
    table.add_column("estimate", justify="right")
    if measured:
        table.add_column("measured (tensors)", justify="right")
    rows = [
        ("weights (and buffers)", "weights"),
        ("gradients", "gradients"),
        ("optimizer states", "optimizer_states"),
        ("activations saved for backward", "activations"),
        ("workspace (temporaries, overlap)", "workspace"),
        ("batch", "inputs"),
        ("peak of a training step", "total"),
    ]
    for label, key in rows:
        cells = [fmt_bytes(est.get(key))] + ([fmt_bytes(measured.get(key))] if measured else [])
        table.add_row(label, *cells, style="bold" if key == "total" else None)
    if args.kv_cache:
        table.add_row("K/V cache (inference, same batch)", fmt_bytes(est["kv_cache_inference"]))
    console.print(table)
    console.print(
        f"{est['params']:,} parameters, {est['trainable_params']:,} trained"
        + (f"; process resident memory grew {fmt_bytes(measured['rss_peak_increase'])}" if measured else "")
    )


def _count(low: int):
    """An argparse type: a whole number of at least ``low``, refused by name otherwise (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value

    return parse


def _search_args(p) -> None:
    p.add_argument("recipe", nargs="?", default="default", help="YAML file or built-in name")
    p.add_argument("--out", help="output folder (default: runs/<recipe name>-<command>)")
    p.add_argument("--trials", type=_count(1), default=20, help="trials this worker runs")
    p.add_argument("--storage", help="Optuna storage URL shared by workers (default: SQLite file in --out)")
    p.add_argument("--study", help="study name; workers with the same name and storage share it")
    p.add_argument("--sampler", choices=["auto", "tpe", "random", "nsga2"], default="auto")
    p.add_argument("--max-drop", type=float, help="validation metric points the result may lose")
    p.add_argument("--max-size", help="largest artifact, e.g. 100KB, 1.5MB")
    p.add_argument("--max-latency-ms", type=float, help="slowest batch-1 p50 latency")
    p.add_argument("--no-final", action="store_true", help="skip the final pare run of the best recipe")


def _cmd_search(args, kind: str) -> None:
    from pare.config import parse_size
    from pare.recipes import load_recipe
    from pare.search.driver import Limits, auto, nas

    recipe = load_recipe(args.recipe)
    out = Path(args.out or Path("runs") / f"{recipe.name}-{kind}")
    limits = Limits(args.max_drop, parse_size(args.max_size, "--max-size"), args.max_latency_ms)
    common = dict(
        limits=limits,
        trials=args.trials,
        storage=args.storage,
        study_name=args.study,
        sampler=args.sampler,
        final=not args.no_final,
    )
    if kind == "auto":
        techniques = args.techniques.split(",") if args.techniques else None
        summary = auto(recipe, out, allowed=techniques, **common)
    else:
        objectives = tuple(o.strip() for o in args.objectives.split(","))
        summary = nas(recipe, out, objectives=objectives, **common)
    print(
        f"study: {summary['study']}, {len(summary['trials'])} trials; Pareto front: trials {summary['front']}"
    )
    print(
        f"best recipe: {out / 'best.yaml'}   plot: {out / 'pareto.png'}   all trials: {out / 'search.json'}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pare", description="Compress neural networks and measure what it cost and bought."
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument(
        "--safe",
        action="store_true",
        help="for recipes from elsewhere: import no factory or model package outside the zoo and PARE_ALLOW",
    )
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe: baseline, stages, evaluation, report")
    r.add_argument(
        "recipe", nargs="?", default="default", help="YAML file or built-in name (default: %(default)s)"
    )
    r.add_argument("--out", help="output folder (default: runs/<recipe name>)")
    r.add_argument("--resume", action="store_true", help="reuse finished stages in --out")
    r.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    r.set_defaults(func=_cmd_run)

    sub.add_parser("recipes", help="list the built-in recipes").set_defaults(func=_cmd_recipes)
    sub.add_parser("techniques", help="list the registered techniques").set_defaults(func=_cmd_techniques)

    v = sub.add_parser(
        "validate", help="check a recipe (data loaded, model built once) and report every problem at once"
    )
    v.add_argument("recipe")
    v.add_argument("--out", help="the output folder `pare run` would use (default: runs/<recipe name>)")
    v.set_defaults(func=_cmd_validate)

    g = sub.add_parser(
        "generate", help="continue prompts with a finished stage of a pretrained LM (greedy, KV cache)"
    )
    g.add_argument(
        "stage",
        help="a stage folder of a run (e.g. runs/smollm2_pydoc/stages/02-int4-rtn-g128), or a folder "
        "written by `pare checkpoint --format onnx`",
    )
    g.add_argument("--prompt", action="append", help="repeatable (default: the recipe's evaluate.prompts)")
    g.add_argument("--max-new-tokens", type=_count(1), default=32)
    g.set_defaults(func=_cmd_generate)

    c = sub.add_parser(
        "checkpoint",
        help="write a stage of a pretrained LM as a folder transformers (compressed-tensors) or ONNX Runtime loads",
    )
    c.add_argument("stage", help="a stage folder of a run, e.g. runs/smollm2_pydoc/stages/02-int4-rtn-g128")
    c.add_argument("--out", required=True, help="a new folder for the weights, config.json and the tokenizer")
    c.add_argument(
        "--format",
        choices=["compressed-tensors", "gptq", "onnx"],
        default="compressed-tensors",
        help="compressed-tensors pack-quantized safetensors, the GPTQ layout (qweight/qzeros/scales; "
        "symmetric 2/4/8-bit, one scheme), or model.onnx with a KV cache and MatMulNBits 4/8-bit layers",
    )
    c.add_argument(
        "--accuracy-level",
        type=int,
        choices=[0, 1, 2, 3, 4],
        default=0,
        help="onnx: MatMulNBits' compute type (0: float32 inputs; 4: inputs quantized to int8 per block, faster)",
    )
    c.set_defaults(func=_cmd_checkpoint)

    f = sub.add_parser("lr-find", help="learning-rate range test with a plot")
    f.add_argument("recipe", nargs="?", default="default")
    f.add_argument("--out")
    f.add_argument("--steps", type=_count(1), default=100)
    f.set_defaults(func=_cmd_lr_find)

    m = sub.add_parser(
        "estimate-memory", help="memory a training step needs: weights, gradients, optimizer, activations"
    )
    m.add_argument("recipe", nargs="?", default="default", help="recipe whose model and data shape to use")
    m.add_argument("--hf", help="a Hugging Face model folder, package or config.json instead of a recipe")
    m.add_argument("--batch-size", type=_count(1), default=32)
    m.add_argument("--seq-len", type=_count(1), help="tokens per sequence (text models)")
    m.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adamw")
    m.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast")
    m.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    m.add_argument("--lora-rank", type=_count(1), help="LoRA adapters of this rank on every Linear")
    m.add_argument("--kv-cache", action="store_true", help="also the K/V cache of inference (causal models)")
    m.add_argument("--measure", action="store_true", help="also run the step for real on CPU and measure")
    m.set_defaults(func=_cmd_estimate_memory)

    s = sub.add_parser("search", help="architecture search over a zoo model's width/depth/kernel/heads")
    _search_args(s)
    s.add_argument(
        "--objectives",
        default="quality,latency_ms",
        help="comma-separated: quality and any of latency_ms, size_bytes, flops (default: %(default)s)",
    )
    s.set_defaults(func=lambda a: _cmd_search(a, "search"))

    a = sub.add_parser("auto", help="search compression recipes over the registered techniques under limits")
    _search_args(a)
    a.add_argument("--techniques", help="comma-separated subset of the registered techniques")
    a.set_defaults(func=lambda a: _cmd_search(a, "auto"))

    rep = sub.add_parser("report", help="rebuild report.md/report.html from a run folder")
    rep.add_argument("dir")
    rep.set_defaults(func=_cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.safe:
        os.environ["PARE_SAFE"] = "1"
    from pare.training.distributed import init_from_env

    init_from_env()  # under torchrun: join the process group
    try:
        args.func(args)
    except PareError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        print(
            f"error: cannot read or write {e.filename or 'a file'}: {e.strerror} (no space left or file too "
            f"large, or no permission); files written so far are whole; fix that and continue with --resume",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: finished stages (and a calibration's finished blocks) are saved; continue with "
            "`pare run ... --resume`",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
