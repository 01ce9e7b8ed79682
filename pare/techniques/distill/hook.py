"""The distillation training hook: teacher outputs (live or cached), student captures, and the
loss terms added to the training loop's task loss."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pare.errors import ConfigError
from pare.tasks.language_model import IGNORE
from pare.techniques.distill.losses import feature_loss, info_nce, kd_loss, soft_targets, token_kd_loss
from pare.training import Hook


def last_linear(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(
            "crd: the model has no Linear layer whose input could serve as its embedding; "
            "name one with crd.teacher_layer / crd.student_layer"
        )
    return names[-1]


class Captures:
    """Forward hooks keeping the outputs of named modules from the latest forward pass, and the
    embedding CRD reads: ``(name, True)`` is the input of that module (the features entering a
    classifier), ``(name, False)`` its output."""

    def __init__(self, model: nn.Module, outputs: list[str] = (), embedding: tuple[str, bool] | None = None):
        self.values: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self.handles = [
            # a transformers block may return (hidden states, ...): the hidden states are matched
            modules[n].register_forward_hook(
                lambda m, i, o, n=n: self.values.__setitem__(n, o[0] if isinstance(o, tuple) else o)
            )
            for n in outputs
        ]
        if embedding is not None:
            name, is_input = embedding
            self.handles.append(
                modules[name].register_forward_hook(
                    lambda m, i, o: self.values.__setitem__("embedding", (i[0] if is_input else o).flatten(1))
                )
            )

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class TeacherBank:
    """Frozen teachers in eval mode. With ``cache``, every output the student needs (logits,
    features, embeddings) is computed once over the training inputs and looked up by row, and
    the teacher models are released: training then needs no teacher in memory."""

    def __init__(
        self,
        teachers: list[nn.Module],
        features: list[str],
        embedding: tuple[str, bool] | None,
        task=None,
        top_k: int | None = None,
        temperature: float = 1.0,
    ):
        # eval mode, no gradients (compute runs under no_grad); the models themselves are left
        # as they are: they may be earlier stages' outputs that later stages start from
        self.teachers = [t.eval() for t in teachers]
        self.features = features  # output names on the first teacher
        self.embedding = embedding  # (module name, take its input?) on the first teacher
        self.cache: dict[str, torch.Tensor] | None = None
        self.task = task  # maps training rows to output rows (a retrieval row is two texts)
        # language models: keep each position's k most likely tokens, as log-probabilities at the
        # distillation temperature (over the whole vocabulary), and their ids
        self.top_k, self.temperature = top_k, temperature

    @torch.no_grad()
    def compute(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for k, teacher in enumerate(self.teachers):
            capture = Captures(teacher, self.features, self.embedding) if k == 0 else None
            try:
                out[f"logits{k}"] = teacher(x)
                if self.top_k is not None:
                    logp = torch.log_softmax(out[f"logits{k}"].float() / self.temperature, dim=-1)
                    out[f"logits{k}"], ids = logp.topk(self.top_k, dim=-1)
                    out[f"ids{k}"] = ids.int()
            finally:
                if capture is not None:
                    capture.remove()
            if capture is not None:
                out.update({f"feature:{n}": capture.values[n] for n in self.features})
                if self.embedding:
                    out["embedding"] = capture.values["embedding"]
        return out

    def build_cache(self, X: torch.Tensor, batch_size: int = 256, budget: int = 2**26) -> int:
        """Every output for the rows of ``X``, in batches of at most ``batch_size`` rows whose
        full outputs hold at most ``budget`` floats (a language model's logits are windows x
        positions x vocabulary)."""
        probe = self.top_k
        self.top_k = None
        row = sum(v[:1].numel() for v in self.compute(X[:1]).values())  # one row's full outputs
        self.top_k = probe
        step = max(1, min(batch_size, budget // row))
        parts = [self.compute(X[i : i + step]) for i in range(0, len(X), step)]
        self.cache = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        self.teachers = []  # no longer needed: training reads the cache
        return sum(t.numel() * t.element_size() for t in self.cache.values())

    def outputs(self, x: torch.Tensor, indices: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if self.cache is not None:
            rows = self.task.output_rows(indices) if self.task is not None else indices
            return {k: v[rows] for k, v in self.cache.items()}
        return self.compute(x)

    @property
    def count(self) -> int:
        return len(self.teachers) if self.cache is None else sum(k.startswith("logits") for k in self.cache)


class Adapter(nn.Module):
    """Maps a student feature onto the teacher's shape: pool to the teacher's resolution, then a
    1x1 convolution (images) or a linear layer (vectors, tokens) when the widths differ."""

    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size, where: str):
        super().__init__()
        s, t = tuple(student_shape[1:]), tuple(teacher_shape[1:])
        if len(s) != len(t) or (len(s) == 2 and s[0] != t[0]) or len(s) not in (1, 2, 3):
            raise ConfigError(
                f"{where}: student feature of shape {s} cannot be matched to teacher feature {t}; "
                f"pick layers whose outputs are both images (C, H, W), vectors (D) or the same tokens (T, D)"
            )
        self.pool = t[1:] if len(s) == 3 and s[1:] != t[1:] else None
        width = 0 if len(s) == 3 else -1  # channels of an image, the last dimension otherwise
        if s[width] == t[width]:
            self.proj = nn.Identity()
        elif len(s) == 3:
            self.proj = nn.Conv2d(s[0], t[0], 1)
        else:
            self.proj = nn.Linear(s[-1], t[-1])

    def forward(self, x):
        if self.pool is not None:
            x = F.adaptive_avg_pool2d(x, self.pool)
        return self.proj(x)


class DistillHook(Hook):
    """Adds ``kd`` (alpha x soft-target loss, or 1 - cosine between embeddings), ``feat:<layer>``
    and ``crd`` terms; the task's own loss is weighted 1 - alpha."""

    def __init__(
        self,
        bank: TeacherBank,
        config,
        student: nn.Module,
        features,
        adapters,
        crd_heads,
        embedding,
        embeddings=False,
    ):
        self.bank, self.cfg, self.student = bank, config, student
        self.embeddings = embeddings  # retrieval: the kd term is 1 - cosine to the teachers' mean embedding
        self.features, self.adapters = features, adapters  # [FeatureConfig], ModuleDict by index
        self.crd_heads = crd_heads  # ModuleDict(student=..., teacher=...) or None
        self.embedding = embedding  # (student module name, take its input?) for CRD
        self.memory = torch.zeros(0, config.crd.dim) if config.crd is not None else None
        self.capture: Captures | None = None

    def on_train_start(self, state):
        state.task_weight = 1.0 - self.cfg.alpha
        self.capture = Captures(self.student, [f.student for f in self.features], self.embedding)

    def loss_terms(self, state):
        cfg = self.cfg
        teacher = self.bank.outputs(state.inputs, state.indices)
        terms = {}
        if cfg.alpha > 0 and self.embeddings:  # the outputs are unit embeddings: match their directions
            target = F.normalize(sum(teacher[f"logits{k}"] for k in range(self.bank.count)), dim=-1)
            terms["kd"] = cfg.alpha * (1 - (state.outputs * target).sum(-1)).mean()
        elif cfg.alpha > 0 and state.outputs.dim() == 3:  # a language model: per scored position
            scored = state.targets != IGNORE
            kd = token_kd_loss(
                state.outputs, teacher["logits0"], scored, cfg.temperature, teacher.get("ids0")
            )
            terms["kd"] = cfg.alpha * kd
        elif cfg.alpha > 0:
            logits = [teacher[f"logits{k}"] for k in range(self.bank.count)]
            weights = [t.weight for t in cfg.teachers] if cfg.weighting == "fixed" else None
            target = soft_targets(logits, cfg.temperature, cfg.weighting, weights, state.targets)
            terms["kd"] = cfg.alpha * kd_loss(state.outputs, target, cfg.temperature)
        # a language model's hidden states are matched where tokens are scored, not on padding
        tokens = state.targets != IGNORE if state.outputs.dim() == 3 else None
        for i, f in enumerate(self.features):
            s = self.adapters[str(i)](self.capture.values[f.student])
            t = teacher[f"feature:{f.teacher}"]
            mask = tokens if tokens is not None and s.dim() == 3 and s.shape[:2] == tokens.shape else None
            terms[f"feat:{f.student}"] = f.weight * feature_loss(s, t, f.loss, mask)
        if self.crd_heads is not None:
            zs = self.crd_heads["student"](self.capture.values["embedding"])
            zt = self.crd_heads["teacher"](teacher["embedding"])
            negatives = self.memory if cfg.crd.negatives == "memory" else None
            terms["crd"] = cfg.crd.weight * info_nce(zs, zt, cfg.crd.temperature, negatives)
            if cfg.crd.negatives == "memory":  # newest teacher embeddings first, oldest dropped
                fresh = F.normalize(zt.detach(), dim=1)
                self.memory = torch.cat([fresh, self.memory])[: cfg.crd.memory_size]
        return terms

    def on_train_end(self, state):
        if self.capture is not None:
            self.capture.remove()
        state.task_weight = 1.0
