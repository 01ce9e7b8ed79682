"""Distillation, low-rank and weight-sharing benchmark on digits.

1. A teacher ResNet and a student CNN with under a quarter of its parameters: the student trained
   from scratch, by logit KD, by feature KD, from two teachers, by CRD, and by self-distillation
   (born-again from a teacher of its own size), 5 seeds each: test accuracy mean and std, and
   the paired KD - scratch difference with a 95 % t-interval over the seeds.
2. Size against accuracy for low-rank factorization (retained energy) and weight sharing (k-means
   clusters, hashing compression) applied to the teacher, each with 2 epochs of fine-tuning.
3. A Deep-Compression-style pipeline on the teacher: prune (unstructured 95 %) -> share (15
   k-means values plus zero) -> quantize (weight-only 4-bit codebook, xz-compressed file): the
   shipped artifact's size against the fp32 safetensors file, and the accuracy drop; the length
   of fine-tuning (3, 5 or 8 epochs per step) chosen on validation accuracy.

    python benchmarks/distillation.py [--quick] [--out FILE.json]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
import _common as bench  # noqa: E402

import pare  # noqa: E402
from pare.cost import count_params  # noqa: E402
from pare.evaluate import predict_proba  # noqa: E402
from pare.export import save_weights  # noqa: E402
from pare.models.config import ModelConfig  # noqa: E402
from pare.recipes.schema import DataConfig, TrainConfig  # noqa: E402
from pare.registry import techniques  # noqa: E402

TEACHER = {"name": "resnet", "args": {"width": 16, "depth": 2, "stages": 3}}
STUDENT = {"name": "cnn", "args": {"width": 16, "depth": 2}}
METHODS = {
    "logit KD": {"alpha": 0.9, "temperature": 4.0},
    "feature KD": {
        "alpha": 0.9,
        "temperature": 4.0,
        "features": [{"teacher": "blocks.5", "student": "features.3"}],
    },
    "multi-teacher": {"alpha": 0.9, "temperature": 4.0, "weighting": "confidence"},
    "CRD": {"alpha": 0.9, "temperature": 4.0, "crd": {"weight": 0.5, "negatives": "memory"}},
    "self-distillation": {"alpha": 0.9, "temperature": 4.0, "generations": 2},
}


def accuracy(model, part) -> float:
    return float((predict_proba(model, part.X).argmax(1) == part.y.numpy()).mean())


def main():
    args = bench.parse_args("distillation")
    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    epochs, student_epochs = (6, 6) if args.quick else (30, 30)
    split = pare.make_splits(DataConfig(source="digits"), seed=0)[0]
    train = TrainConfig(epochs=epochs, lr=3e-3, patience=None)
    torch.manual_seed(0)
    teacher = pare.build_model(ModelConfig(**TEACHER), split.input_shape, 10)
    pare.fit(teacher, split.train, split.val, train, description="train teacher resnet")
    teacher.eval()
    teacher_acc = accuracy(teacher, split.test)
    work = Path(tempfile.mkdtemp(prefix="pare-bench-"))
    torch.manual_seed(1)
    second = pare.build_model(ModelConfig(name="cnn", args={"width": 64}), split.input_shape, 10)
    pare.fit(second, split.train, split.val, train, description="train second teacher cnn64")
    save_weights(second.eval(), work / "cnn64.safetensors")
    peer = {"name": STUDENT["name"], "args": STUDENT["args"]}
    student_train = TrainConfig(epochs=student_epochs, lr=3e-3, patience=None)
    print(
        f"teacher {count_params(teacher)['params']} params, test accuracy {teacher_acc:.4f}; second teacher "
        f"{accuracy(second, split.test):.4f}",
        flush=True,
    )

    runs: dict[str, list[float]] = {"scratch": []}
    for seed in seeds:  # the same initialisation and batch order as the distilled students
        torch.manual_seed(seed)
        scratch = pare.build_model(ModelConfig(**STUDENT), split.input_shape, 10)
        pare.fit(scratch, split.train, split.val, student_train, seed=seed, description="scratch student")
        runs["scratch"].append(accuracy(scratch.eval(), split.test))
    print(f"  scratch: {np.mean(runs['scratch']):.4f} +- {np.std(runs['scratch'], ddof=1):.4f}", flush=True)
    student_params = count_params(scratch)["params"]
    for method, extra in METHODS.items():
        config = {"student": STUDENT, **extra}
        if method == "multi-teacher":
            config["teachers"] = [
                {"stage": "baseline"},
                {"name": "cnn", "args": {"width": 64}, "weights": str(work / "cnn64.safetensors")},
            ]
        if method == "self-distillation":
            config["teachers"] = [peer]  # a teacher of the student's own size, trained here
        t0 = time.perf_counter()
        runs[method] = []
        for seed in seeds:
            student, info = bench.stage(teacher, "distill", config, split, student_train, seed=seed)
            runs[method].append(accuracy(student, split.test))
        print(
            f"  {method}: {np.mean(runs[method]):.4f} +- {np.std(runs[method], ddof=1):.4f} "
            f"({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )

    def paired(method):
        d = np.array(runs[method]) - np.array(runs["scratch"])
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        return float(d.mean()), [float(d.mean() - half), float(d.mean() + half)]

    rows = []
    base_bytes = save_weights(teacher, work / "teacher.safetensors")
    for method, accs in runs.items():
        diff, ci = paired(method) if method != "scratch" else (0.0, [0.0, 0.0])
        rows.append(
            {
                "name": method,
                "model": "cnn16",
                "tool": "pare",
                "metrics": {
                    "accuracy": float(np.mean(accs)),
                    "accuracy_std": float(np.std(accs, ddof=1)),
                    "per_seed": accs,
                },
                "delta_vs_scratch": diff,
                "delta_vs_scratch_ci95": ci,
                "params": student_params,
                "params_ratio": count_params(teacher)["params"] / student_params,
            }
        )

    # 2. size against accuracy, on the teacher
    ft = TrainConfig(epochs=2, lr=1e-3, patience=None)
    curves = {"lowrank": [], "share-kmeans": [], "share-hash": []}
    sweeps = [
        ("lowrank", "lowrank", "energy", [0.5, 0.7, 0.8, 0.9, 0.95]),
        ("share-kmeans", "share", "clusters", [2, 4, 8, 16, 32]),
        ("share-hash", "share", "compression", [2, 4, 8, 16]),
    ]
    for label, technique, key, values in sweeps:
        for v in values:
            config = {key: v, "finetune_epochs": 2} | ({"method": "hash"} if label == "share-hash" else {})
            model, info = bench.stage(teacher, technique, config, split, ft)
            path = work / f"{label}-{v}"
            if techniques()[technique].export:
                size = bench.export(model, technique, config, info, path, None)["artifact"].stat().st_size
            else:
                path.mkdir()
                size = save_weights(model, path / "m.safetensors")
            curves[label].append(
                {
                    "value": v,
                    "accuracy": accuracy(model, split.test),
                    "size_bytes": size,
                    "size_ratio": base_bytes / size,
                }
            )
        print(
            f"  {label}: "
            + ", ".join(
                f"{key}={p['value']}: {p['accuracy']:.3f} @ {p['size_ratio']:.1f}x" for p in curves[label]
            ),
            flush=True,
        )

    # 3. prune -> share -> quantize, with 3, 5 or 8 epochs of fine-tuning after each pruning step
    # and after sharing; the length is chosen on validation accuracy (then the smaller file), and
    # every candidate's test accuracy is kept in the JSON, so the choice can be checked.
    q_config = {"mode": "weight_only", "scheme": "codebook", "bits": 4, "entropy_coding": True}
    candidates = []
    for ft in (3,) if args.quick else (3, 5, 8):
        pipeline_ft = TrainConfig(epochs=ft, lr=1e-3, patience=None)
        pruned, _ = bench.stage(
            teacher,
            "prune",
            {"method": "unstructured", "scope": "global", "amount": 0.95, "steps": 3, "finetune_epochs": ft},
            split,
            pipeline_ft,
        )
        shared, _ = bench.stage(pruned, "share", {"clusters": 15, "finetune_epochs": ft}, split, pipeline_ft)
        quantized, q_info = bench.stage(shared, "quantize", q_config, split, pipeline_ft)
        artifact = bench.export(
            quantized, "quantize", q_config, q_info, work / f"pipeline-{ft}", split.test.X[:1]
        )["artifact"]
        candidates.append(
            {
                "name": "prune-share-quantize",
                "model": "resnet16",
                "tool": "pare",
                "finetune_epochs": ft,
                "metrics": {"accuracy": accuracy(quantized, split.test)},
                "val_accuracy": accuracy(quantized, split.val),
                "stage_accuracy": {
                    "pruned": accuracy(pruned, split.test),
                    "shared": accuracy(shared, split.test),
                },
                "size_bytes": artifact.stat().st_size,
                "size_ratio": base_bytes / artifact.stat().st_size,
                "base_bytes": base_bytes,
            }
        )
        c = candidates[-1]
        print(
            f"  pipeline, {ft} fine-tuning epochs: val {c['val_accuracy']:.4f}, test {c['metrics']['accuracy']:.4f}, "
            f"{c['size_ratio']:.1f}x smaller",
            flush=True,
        )
    pipe = max(candidates, key=lambda c: (c["val_accuracy"], -c["size_bytes"]))
    pipe = {
        **pipe,
        "candidates": [
            {k: c[k] for k in ("finetune_epochs", "val_accuracy", "metrics", "size_ratio")}
            for c in candidates
        ],
    }
    rows.append(pipe)
    print(
        f"  pipeline: accuracy {pipe['metrics']['accuracy']:.4f} (teacher {teacher_acc:.4f}), {pipe['size_bytes']} bytes, {pipe['size_ratio']:.1f}x smaller",
        flush=True,
    )

    _plot(curves, base_bytes, teacher_acc, pipe, Path(args.out).with_name("compression-curves.png"))
    kd_diff, kd_ci = paired("logit KD")
    targets = [
        bench.target(
            "KD beats scratch",
            "5-seed mean difference > 0 with its 95 % interval above zero",
            kd_ci[0],
            kd_diff > 0 and kd_ci[0] > 0,
        ),
        bench.target(
            "KD near the teacher",
            "KD student within 1 point of the teacher",
            (teacher_acc - np.mean(runs["logit KD"])) * 100,
            teacher_acc - np.mean(runs["logit KD"]) <= 0.01,
        ),
        bench.target(
            "pipeline size", ">= 30x smaller artifact", pipe["size_ratio"], pipe["size_ratio"] >= 30
        ),
        bench.target(
            "pipeline accuracy",
            "<= 1 point drop",
            (teacher_acc - pipe["metrics"]["accuracy"]) * 100,
            teacher_acc - pipe["metrics"]["accuracy"] <= 0.01,
        ),
    ]
    bench.print_table(
        rows[:-1],
        [
            ("method", lambda r: r["name"]),
            ("accuracy", lambda r: f"{r['metrics']['accuracy']:.4f} +- {r['metrics']['accuracy_std']:.4f}"),
            (
                "vs scratch",
                lambda r: (
                    f"{100 * r['delta_vs_scratch']:+.2f} pt [{100 * r['delta_vs_scratch_ci95'][0]:+.2f}, {100 * r['delta_vs_scratch_ci95'][1]:+.2f}]"
                ),
            ),
        ],
    )
    bench.print_targets(targets)
    bench.write(
        "distillation",
        args,
        rows,
        targets,
        teacher={"accuracy": teacher_acc, "params": count_params(teacher)["params"]},
        curves=curves,
        seeds=seeds,
    )


def _plot(curves, base_bytes, teacher_acc, pipe, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        ax.plot([p["size_bytes"] / 1024 for p in points], [p["accuracy"] for p in points], "o-", label=label)
    ax.plot(
        [pipe["size_bytes"] / 1024],
        [pipe["metrics"]["accuracy"]],
        "r*",
        markersize=14,
        label="prune -> share -> quantize",
    )
    ax.plot([base_bytes / 1024], [teacher_acc], "ks", label="fp32 teacher")
    ax.set_xscale("log")
    ax.set_xlabel("artifact size (KiB, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("ResNet on digits: size against accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
