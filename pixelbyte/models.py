"""Models over pixelbyte windows -- LSTM, attention and BysMamba (residual Mamba blocks) -- behind
one class, ``PixelByteModel(ModelConfig)``, which owns its objective's loss.

    model = PixelByteModel(ModelConfig(model="bysmamba", objective="causal"))
    logits, loss = model(x, targets)        # x : (B, L, 3, 3) long -> logits (B, L, V), loss ()
    logits_t, state = model.step(x_t, model.init_state(1))   # causal only: x_t (B, 3, 3) -> (B, V)

The objective (``select``) says what the logits mean: ``next`` (the paper's): the last position
predicts the token after the window; ``causal``: the centre is zeroed and position t predicts token t
(padding ignored). Bidirectional models see each position's future: ``next`` only, no ``step``.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from huggingface_hub.constants import CONFIG_NAME, SAFETENSORS_SINGLE_FILE

from . import tokenizer as tok
from .config import EMBEDDINGS, MODELS, RUNTIME_FIELDS, ModelConfig, RunConfig  # noqa: F401
from .mamba import Mamba
from .mamba2 import Mamba2

PARAMETER_BUDGET = 100_000  # the paper: "all models under 100k parameters"
# Models shipped inside the package, loadable by name: PixelByteModel.from_pretrained("pretrained")
PRETRAINED_DIR = os.path.join(os.path.dirname(__file__), "pretrained")
PRETRAINED = {name: os.path.join(PRETRAINED_DIR, "emoji") for name in ("pretrained", "pixelbyte-emoji")}
RUN_NAME = "run.json"       # the RunConfig saved beside config.json and the weights
METADATA_KEY = "pixelbyte_model_config"   # the ModelConfig inside the safetensors header
RUN_KEY = "pixelbyte_run"                  # the RunConfig inside the safetensors header


# Embeddings: (B, L, 3, 3) long -> (B, L, dim)


class PxByEmbed(nn.Module):
    """Embed each window's 9 cells (E = max(9, dim // 9) values each), optionally mix them with a 3x3 conv
    (sigmoid(alpha) * emb + (1 - sigmoid(alpha)) * conv(emb), alpha per cell), project to dim, LayerNorm."""

    def __init__(self, vocab_size: int, dim: int, k: int = 3, conv: bool = True):
        super().__init__()
        self.k, self.cell_dim = k, max(9, dim // 9)
        self.cells = nn.Embedding(vocab_size, self.cell_dim)
        self.conv = nn.Conv2d(self.cell_dim, self.cell_dim, k, padding=k // 2) if conv else None
        self.alpha = nn.Parameter(torch.zeros(k, k)) if conv else None  # one per cell; sigmoid(0) = 1/2
        self.proj = nn.Linear(k * k * self.cell_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, k, _ = x.shape
        emb = self.cells(x.reshape(B * L, k, k)).permute(0, 3, 1, 2)   # (B*L, E, k, k)
        if self.conv is not None:
            mix = torch.sigmoid(self.alpha)                    # (k, k), broadcast over E
            emb = mix * emb + (1 - mix) * self.conv(emb)       # (B*L, E, k, k)
        out = self.proj(emb.reshape(B * L, -1))                # (B*L, dim)
        return self.norm(out).reshape(B, L, -1)                # (B, L, dim)


class CenterEmbed(nn.Module):
    """The centre token only: nn.Embedding + LayerNorm."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.token = nn.Embedding(vocab_size, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.token(x[:, :, 1, 1]))            # (B, L, dim)


class PositionEmbed(nn.Module):
    """Summed learned embeddings of where each predicted token sits: (B, L, 7) ``tokenizer.positions``."""

    def __init__(self, dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n + 1, dim) for n in tok.POSITION_LIMITS)
        for table in self.tables:
            nn.init.normal_(table.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return sum(table(positions[..., i]) for i, table in enumerate(self.tables))


# Backbones: forward (B, L, dim) -> (B, L, out_dim); step (B, dim) -> (B, out_dim) with a state


class LSTMBackbone(nn.Module):
    """PixelRNN-like LSTM stack: a first layer (bidirectional or not), then depth - 1 layers. A
    bidirectional first layer gives each direction half the cells, keeping the width and size."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        bi = cfg.bidirectional
        self.out_dim = cfg.proj_size or cfg.hidden
        self.first = nn.LSTM(cfg.dim, cfg.hidden // 2 if bi else cfg.hidden, batch_first=True,
                             bidirectional=bi, proj_size=cfg.proj_size // 2 if bi else cfg.proj_size)
        self.rest = nn.LSTM(self.out_dim, cfg.hidden, num_layers=cfg.depth - 1, batch_first=True,
                            proj_size=cfg.proj_size, dropout=cfg.dropout if cfg.depth > 2 else 0.0,
                            ) if cfg.depth > 1 else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h, mix=None):                            # h : (B, L, dim)
        h, _ = self.first(h)                                   # (B, L, out_dim)
        h = h if mix is None else mix(h)                       # the condition, after the first layer
        return h if self.rest is None else self.rest(self.drop(h))[0]   # (B, L, out_dim)

    def init_state(self, batch_size, device, dtype):
        return {"first": None, "rest": None}                   # nn.LSTM starts from zeros (h0, c0)

    def step(self, h, state, mix=None):                        # h : (B, dim)
        h, first = self.first(h[:, None], state["first"])      # (B, 1, out_dim)
        h = h if mix is None else mix(h[:, 0])[:, None]
        h, rest = (h, None) if self.rest is None else self.rest(h, state["rest"])
        return h[:, 0], {"first": first, "rest": rest}         # (B, out_dim)


def rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (GPT-NeoX half-split) of the first 2 * len(inv_freq) features of x (B, H, L, hd)."""
    angles = positions[:, None].to(inv_freq) * inv_freq       # (L, R/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    half = inv_freq.numel()
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


class KVCache:
    """Keys and values of the tokens seen so far for one attention layer (O(1) amortised appends)."""
    k = v = None                                               # (B, H, capacity, hd), from the first append
    length = 0

    def append(self, k, v):                                    # k, v : (B, H, 1, hd)
        if self.k is None:
            self.k, self.v = k[:, :, :0], v[:, :, :0]
        if self.length == self.k.shape[2]:                     # full: double the buffers (32 at first)
            self.k, self.v = (F.pad(t, (0, 0, 0, max(32, self.length))) for t in (self.k, self.v))
        self.k[:, :, self.length], self.v[:, :, self.length] = k[:, :, 0], v[:, :, 0]
        self.length += 1
        return self.k[:, :, :self.length], self.v[:, :, :self.length]   # (B, H, T, hd)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.head_dim, self.causal = cfg.heads, cfg.head_dim, cfg.is_causal
        inner = self.heads * self.head_dim                     # = dim when heads divides dim
        self.qkv = nn.Linear(cfg.dim, 3 * inner)
        self.out = nn.Linear(inner, cfg.dim)
        self.dropout = cfg.dropout
        half = self.head_dim // 2
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(half) / max(half, 1)), persistent=False)

    def _qkv(self, x, positions):                              # x : (B, L, dim)
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return rotate(q, positions, self.inv_freq), rotate(k, positions, self.inv_freq), v  # (B, H, L, hd)

    def _merge(self, y):                                       # y : (B, H, L, hd) -> (B, L, dim)
        B, H, L, hd = y.shape
        return self.out(y.transpose(1, 2).reshape(B, L, H * hd))

    def forward(self, x):
        q, k, v = self._qkv(x, torch.arange(x.shape[1], device=x.device))
        return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                                          dropout_p=self.dropout if self.training else 0.0))

    def step(self, x, cache: KVCache):                         # x : (B, 1, dim)
        q, k, v = self._qkv(x, torch.tensor([cache.length], device=x.device))
        keys, values = cache.append(k, v)                      # every cached token is in the past
        return self._merge(F.scaled_dot_product_attention(q, keys, values))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = SelfAttention(cfg)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h, cache=None):                          # h : (B, L, dim)
        a = self.norm1(h)
        h = h + self.drop(self.attn(a) if cache is None else self.attn.step(a, cache))
        return h + self.drop(self.ffn(self.norm2(h)))

    def step(self, h, cache: KVCache):                         # h : (B, dim)
        return self(h[:, None], cache)[:, 0]


class BlockStack(nn.Module):
    """``blocks`` in turn, the condition's ``mix`` after the first; ``step`` gives each its own state."""

    def forward(self, h, mix=None, states=None):               # h : (B, L, dim), or (B, dim) with states
        for i, block in enumerate(self.blocks):
            h = block(h) if states is None else block.step(h, states[i])
            if i == 0 and mix is not None:
                h = mix(h)
        return h

    def step(self, h, states, mix=None):                       # h : (B, dim); states updated in place
        return self(h, mix, states), states


class AttentionBackbone(BlockStack):
    """Image-Transformer-like: pre-norm blocks with rotary positions; causal unless bidirectional."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.out_dim = cfg.dim
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.depth))

    def init_state(self, batch_size, device, dtype):
        return [KVCache() for _ in self.blocks]


class MambaBlock(nn.Module):
    """h + Mamba(LayerNorm(h)); bidirectional: h + LayerNorm(Mamba(u) + flip(Mamba(flip(u)))), one Mamba."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim)
        mixer, options = (Mamba2, {"headdim": cfg.headdim}) if cfg.ssm == "mamba2" else (Mamba, {})
        self.mixer = mixer(cfg.dim, d_state=cfg.hidden, d_conv=cfg.d_conv, expand=cfg.expand,
                           backend=cfg.backend, scan_impl=cfg.scan_impl, **options)
        with torch.no_grad():  # residual branches scaled by 1/sqrt(depth), as mamba_ssm's init
            self.mixer.out_proj.weight /= math.sqrt(cfg.depth)
        self.bi_norm = nn.LayerNorm(cfg.dim) if bidirectional else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h):                                      # h : (B, L, dim)
        u = self.norm(h)
        y = self.mixer(u)
        if self.bi_norm is not None:
            y = self.bi_norm(y + self.mixer(u.flip(1)).flip(1))
        return h + self.drop(y)

    def step(self, h, state):                                  # h : (B, dim); (conv, ssm) state in place
        y, _, _ = self.mixer.step(self.norm(h)[:, None], *state)
        return h + y[:, 0]


class BysMambaBackbone(BlockStack):
    """Residual Mamba blocks; bidirectional ones (the first and last) when ``bidirectional``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.out_dim = cfg.dim
        self.blocks = nn.ModuleList(MambaBlock(cfg, bidirectional=cfg.bidirectional and i in (0, cfg.depth - 1))
                                    for i in range(cfg.depth))

    def init_state(self, batch_size, device, dtype):
        return [block.mixer.allocate_inference_cache(batch_size, dtype=dtype) for block in self.blocks]


class SegmentMemory(nn.Module):
    """The condition (``ModelConfig.condition``): at every position, the mean of the first layer's
    outputs over the item's completed segments (the caption while a caption-first image is drawn,
    the image while its caption is written), normalised, projected (from zero) and added after the
    first layer, so later layers read the other modality directly, as conditional PixelCNN does.
    Causal; rows with ``keep`` 0 (condition dropout, guidance's unconditional stream) get nothing."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.into = nn.Linear(width, width)
        nn.init.zeros_(self.into.weight)
        nn.init.zeros_(self.into.bias)

    def forward(self, h, seg_begin):               # h (B, L, W), seg_begin (B, L) -> summary (B, L, W)
        total = h.cumsum(1).gather(1, seg_begin[..., None].expand_as(h))          # sum over 0..seg_begin
        return self.norm(total / (seg_begin + 1)[..., None].to(h.dtype))

    def step(self, h, seg_start, memory):          # h (B, W), seg_start (B,) bool -> summary (B, W)
        memory["total"], memory["count"] = memory["total"] + h, memory["count"] + 1
        mean = self.norm(memory["total"] / memory["count"][:, None])
        memory["summary"] = torch.where(seg_start[:, None], mean, memory["summary"])
        return memory["summary"]


BACKBONES = {"lstm": LSTMBackbone, "attention": AttentionBackbone, "bysmamba": BysMambaBackbone}


# The model


class CheckpointError(ValueError):
    """A saved model or training checkpoint that cannot be used (corrupt, edited, of another config or run)."""


def loss_sums(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summable (3, 3) float64 statistics of predictions (N, V) against targets (N,): rows = ``tokenizer.MODALITIES``,
    columns = [tokens, loss sum (nats), correct]. Training and evaluation both read these, so they agree."""
    with torch.no_grad():
        losses = F.cross_entropy(pred.float(), target, reduction="none").double()
        correct = (pred.argmax(-1) == target).double()
        kind = tok.modality(target)
        return torch.stack([torch.stack([sel.sum().double(), losses[sel].sum(), correct[sel].sum()])
                            for sel in (kind == k for k in range(len(tok.MODALITIES)))])


def metrics_from_sums(sums) -> dict:
    """``loss_sums`` (summed over batches and ranks) -> loss, accuracy, bits per token, overall and by modality."""
    sums = torch.as_tensor(sums, dtype=torch.float64)
    n, loss, correct = (float(v) for v in sums.sum(0))
    out = {"loss": loss / n if n else math.nan, "accuracy": correct / n if n else math.nan}
    out["bits_per_token"] = out["loss"] / math.log(2)
    for name, (k, lk, ck) in zip(tok.MODALITIES, sums.tolist()):
        out[f"acc_{name}"] = ck / k if k else math.nan
        out[f"bpt_{name}"] = lk / k / math.log(2) if k else math.nan
    return out


class PixelByteModel(nn.Module, PyTorchModelHubMixin, library_name="pixelbyte",
                     tags=["pixelbytes", "multimodal"]):
    """Embedding [+ positions] -> backbone -> LayerNorm -> head. ``save_pretrained`` writes config.json,
    model.safetensors (its header holds the config too, so an edited config.json is caught) and, when
    ``model.run`` is known, run.json; ``from_pretrained`` rebuilds it, ``push_to_hub`` uploads all three."""

    def __init__(self, config: ModelConfig | dict):
        super().__init__()
        self.config = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
        self.run: RunConfig | None = None      # set by from_run / the Trainer / from_pretrained
        cfg = self.config
        self.embed = PxByEmbed(cfg.vocab_size, cfg.dim, conv=cfg.conv) if cfg.embedding == "pxby" \
            else CenterEmbed(cfg.vocab_size, cfg.dim)
        self.where = PositionEmbed(cfg.dim) if cfg.positions else None
        self.drop = nn.Dropout(cfg.dropout)
        self.backbone = BACKBONES[cfg.model](cfg)
        self.memory = SegmentMemory(self.backbone.out_dim) if cfg.condition else None
        self.norm = nn.LayerNorm(self.backbone.out_dim)
        self.head = nn.Linear(self.backbone.out_dim, cfg.vocab_size)

    @classmethod
    def from_run(cls, run: RunConfig) -> "PixelByteModel":
        """A fresh model of ``run.model`` (weights drawn from ``run.train.seed``) that knows its run."""
        torch.manual_seed(run.train.seed)
        model = cls(run.model)
        model.run = run
        return model

    @property
    def is_causal(self) -> bool:
        return self.config.is_causal

    @staticmethod
    def _check_windows(x, ndim, what):
        """Shape and dtype only (static, so free under torch.compile); ids are checked where they enter."""
        shape = "(B, L, 3, 3)" if ndim == 4 else "(B, 3, 3)"
        if x.dim() != ndim or tuple(x.shape[-2:]) != (3, 3):
            raise ValueError(f"{what} expects windows of shape {shape}, got {tuple(x.shape)}")
        if x.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
            raise TypeError(f"{what} expects integer token ids, got dtype {x.dtype}")
        return x.long()

    def _embed(self, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        h = self.embed(x)                                      # (B, L, dim)
        if self.where is not None:
            h = h + self.where(positions)                      # positions : (B, L, 7)
        return self.drop(h)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, unconditional: torch.Tensor | None = None):
        """x : (B, L, 3, 3) -> (logits (B, L, V), loss () or None). ``targets``: (B,) for ``next``, (B, L)
        for ``causal`` (0 = padding). ``positions``: (B, L, 7) (``tokenizer.positions``), computed if None.
        ``unconditional``: (B,) bool, rows that do not read the condition (``condition`` models)."""
        logits = self.logits(x, positions, unconditional)
        if targets is None:
            return logits, None
        pred, target = self.select(logits, targets)
        return logits, F.cross_entropy(pred.float(), target)

    def logits(self, x: torch.Tensor, positions: torch.Tensor | None = None,
               unconditional: torch.Tensor | None = None) -> torch.Tensor:
        """x : (B, L, 3, 3) long -> logits (B, L, V) at every position."""
        x = self._check_windows(x, 4, "forward")
        needed = self.memory is not None or (self.where is not None and positions is None)
        prev = tok.previous_ids(x) if needed else None         # (B, L) the token before each position
        if self.where is not None and positions is None:
            positions = tok.positions(x, prev)                 # (B, L, 7)
        if self.memory is None:
            h = self.backbone(self._embed(x, positions))       # (B, L, out_dim)
            return self.head(self.norm(h))                     # (B, L, V)
        keep = self._keep(x.shape[0], x.device, unconditional)[:, None, None]
        seg_begin = tok.segment_starts(x, prev)

        def mix(h):                                            # after the first layer
            return h + self.memory.into(self.memory(h, seg_begin)) * keep
        h = self.backbone(self._embed(x, positions), mix=mix)
        return self.head(self.norm(h))

    def _keep(self, batch_size: int, device, unconditional=None) -> torch.Tensor:
        """(B,) 1 where a row reads the condition: not asked unconditional, and in training not
        dropped (``condition_dropout``)."""
        keep = torch.ones(batch_size, device=device)
        if unconditional is not None:
            keep = keep * ~unconditional.to(device=device, dtype=torch.bool)
        if self.training and self.config.condition_dropout:
            keep = keep * (torch.rand(batch_size, device=device) >= self.config.condition_dropout)
        return keep

    def select(self, logits: torch.Tensor, targets: torch.Tensor):
        """The (N, V) predictions and (N,) targets the objective scores: the last position (``next``),
        or every position against its own token, padding dropped (``causal``)."""
        if self.config.objective == "next":
            if targets.dim() != 1:
                raise ValueError(f"objective 'next' wants targets (B,), got {tuple(targets.shape)}")
            return logits[:, -1], targets                     # (B, V), (B,)
        if targets.shape != logits.shape[:2]:
            raise ValueError(f"objective 'causal' wants targets (B, L) = {tuple(logits.shape[:2])}, "
                             f"got {tuple(targets.shape)}")
        keep = targets.reshape(-1) != tok.PAD_ID
        return logits.reshape(-1, logits.shape[-1])[keep], targets.reshape(-1)[keep]

    # --- token-by-token decoding (causal models)
    def _require_causal(self, what):
        if not self.is_causal:
            raise RuntimeError(f"{what}: this {self.config.model} model is bidirectional, so every logit depends "
                               f"on the whole window (its future included) and it cannot decode token by token. To "
                               f"generate with it, re-run forward() on the whole window for each new token and read "
                               f"logits[:, -1].")

    def init_state(self, batch_size: int, device=None, unconditional: torch.Tensor | None = None):
        """Empty decoding state: LSTM (h, c), Mamba (conv, ssm) states, or attention KV caches
        (+ the streams' ``tokenizer.StreamPositions`` with ``positions``, the running segment
        memory with ``condition``; ``unconditional`` (B,) bool as in ``forward``)."""
        self._require_causal("init_state")
        param = self.head.weight
        device = device or param.device
        state = self.backbone.init_state(batch_size, device, param.dtype)
        if self.where is None and self.memory is None:
            return state
        outer = {"backbone": state, "t": 0}
        if self.where is not None:
            outer["where"] = tok.StreamPositions(batch_size, device)
        if self.memory is not None:
            width = self.backbone.out_dim
            zeros = lambda *shape: torch.zeros(batch_size, *shape, device=device, dtype=param.dtype)  # noqa: E731
            outer["memory"] = {"total": zeros(width), "count": zeros(), "summary": zeros(width),
                               "keep": self._keep(batch_size, device, unconditional).to(param.dtype)[:, None]}
        return outer

    def step(self, x_t: torch.Tensor, state):
        """x_t : (B, 3, 3) -> (logits (B, V), state): the logits forward() gives at that position,
        with O(1) work per token (attention: O(tokens so far)), all on the model's device. The
        state is updated (in place for Mamba and attention) and returned."""
        self._require_causal("step")
        x_t = self._check_windows(x_t, 3, "step")
        positions, outer, mix = None, None, None
        if self.where is not None or self.memory is not None:
            outer, state = state, state["backbone"]
            prev = tok.previous_ids(x_t)                         # (B,) the token before this one
            if self.where is not None:
                if outer["t"] > 0:                               # position 0 has no token before it
                    outer["where"].push(prev)
                positions = outer["where"].features()[:, None]   # (B, 1, 7)
            if self.memory is not None:
                memory = outer["memory"]

                def mix(h):                                      # after the first layer
                    summary = self.memory.step(h, prev == tok.SEG_END_ID, memory)
                    return h + self.memory.into(summary) * memory["keep"]
            outer["t"] += 1
        h = self._embed(x_t[:, None], positions)[:, 0]          # (B, dim)
        h, state = self.backbone.step(h, state, mix=mix)        # (B, out_dim)
        if outer is None:
            return self.head(self.norm(h)), state               # (B, V)
        return self.head(self.norm(h)), {**outer, "backbone": state}

    def num_parameters(self) -> int:
        return count_parameters(self)

    # --- saving and loading (the hub mixin's hooks; save_pretrained / push_to_hub come with it)
    def _save_pretrained(self, save_directory) -> None:
        from safetensors.torch import save_model

        metadata = {METADATA_KEY: json.dumps(self.config.to_dict(), sort_keys=True)}
        if self.run is not None:
            metadata[RUN_KEY] = json.dumps(self.run.to_dict(), sort_keys=True)
        weights = os.path.join(save_directory, SAFETENSORS_SINGLE_FILE)
        save_model(self, weights, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(weights, 0o666 & ~umask)            # the file mode other files get (not 0600)
        if self.run is not None:
            self.run.save(os.path.join(save_directory, RUN_NAME))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "PixelByteModel":
        """Load a ``save_pretrained`` directory, hub repo id or ``PRETRAINED`` name. Keywords: the hub's,
        ``map_location`` (default "cpu"), runtime fields (``backend``, ``scan_impl``)."""
        source = PRETRAINED.get(str(pretrained_model_name_or_path), str(pretrained_model_name_or_path))
        folder, name = os.path.split(os.path.normpath(source))
        for _ in range(50):        # a training swaps best_model/ by two renames: wait for the second one
            if os.path.exists(source) or not os.path.exists(os.path.join(folder, f".{name}.old")):
                break
            time.sleep(0.1)
        if not os.path.isdir(source) and os.path.exists(source):
            raise FileNotFoundError(f"{source!r} is a file; from_pretrained wants the directory that "
                                    f"holds {CONFIG_NAME} and {SAFETENSORS_SINGLE_FILE}")
        try:
            config = os.path.join(source, CONFIG_NAME)
            found = json.loads(open(config).read()) if os.path.isfile(config) else {}
            if not isinstance(found, dict):
                raise CheckpointError(f"{config}: expected a JSON object of ModelConfig fields, got a "
                                      f"JSON {type(found).__name__}")
            return super().from_pretrained(source, **kwargs)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{_where(source, CONFIG_NAME)}: not valid JSON ({err})") from err
        except Exception as err:          # the hub: unknown repo, no network...
            if os.path.isdir(source) or isinstance(err, (CheckpointError, FileNotFoundError, TypeError)):
                raise
            raise FileNotFoundError(f"could not load {source!r} from the Hugging Face hub "
                                    f"({type(err).__name__}: {err}). If it is meant to be a local "
                                    f"directory, it does not exist.") from err

    @classmethod
    def _from_pretrained(cls, *, model_id, revision, cache_dir, force_download, local_files_only, token,
                         map_location="cpu", config=None, **overrides) -> "PixelByteModel":
        hub = dict(revision=revision, cache_dir=cache_dir, force_download=force_download, token=token,
                   local_files_only=local_files_only)
        config_file, runtime = _where(model_id, CONFIG_NAME), RUNTIME_FIELDS["model"]
        if config is None:
            raise _not_saved(config_file, model_id)
        if set(overrides) - set(runtime):
            raise TypeError(f"from_pretrained: unexpected argument(s) {sorted(set(overrides) - set(runtime))}; "
                            f"runtime fields that may be overridden: {list(runtime)}")
        try:
            model_cfg = replace(ModelConfig.from_dict(config), **overrides)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{config_file}: not a valid PixelByteModel config: {err}") from err
        weights_file = _resolve_file(model_id, SAFETENSORS_SINGLE_FILE, hub)
        state, metadata = _read_safetensors(weights_file)
        # the header holds the config the weights were saved with (older files: none); the fields
        # the weights cannot show (n_heads, objective, ...) must still agree with config.json
        saved = json.loads(metadata.get(METADATA_KEY, "{}"))
        _refuse_edits(config_file, weights_file, [
            f"{k}: {config_file} says {v!r}, the weights were saved with {saved[k]!r}"
            for k, v in model_cfg.to_dict().items() if k not in runtime and k in saved and saved[k] != v])
        model = cls(model_cfg)
        _check_state_dict(model, state, weights_file, config_file)
        model.load_state_dict(state, strict=True)
        model.run = _load_run(model_id, hub, model_cfg, config_file)
        if model.run is not None and RUN_KEY in metadata:     # e.g. an edited test_size would change the held-out items
            saved_run = RunConfig.from_dict(json.loads(metadata[RUN_KEY]))
            _refuse_edits(_where(model_id, RUN_NAME), weights_file, [
                line for line in saved_run.diff(model.run, ("the weights were saved with", "run.json says"))
                if line.startswith(("data.", "samples.")) and not line.startswith("data.source")])
        return model.to(map_location).eval()


def _where(source: str, filename: str) -> str:
    return os.path.join(source, filename) if os.path.isdir(source) else f"{source}/{filename}"


def _not_saved(path: str, source: str) -> FileNotFoundError:
    return FileNotFoundError(f"{path} not found: {source!r} is not a directory written by "
                             f"save_pretrained (it needs {CONFIG_NAME} and {SAFETENSORS_SINGLE_FILE})")


def _refuse_edits(edited_file: str, weights_file: str, changes: list[str]):
    if changes:
        raise CheckpointError(f"{edited_file} was edited after {weights_file} was saved: "
                              + "; ".join(changes) + ". Restore the saved values or retrain.")


def _resolve_file(source: str, filename: str, hub: dict, required: bool = True) -> str | None:
    """The local or downloaded path of a checkpoint's file; None if it is missing and not ``required``."""
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if required and not os.path.isfile(path):
            raise _not_saved(path, source)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(repo_id=source, filename=filename, **hub)
    except EntryNotFoundError:
        if required:
            raise
        return None


def _read_safetensors(path: str) -> tuple[dict, dict]:
    """(state dict, header metadata) of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as err:  # SafetensorError, OSError...
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err}); "
                              f"it is probably truncated or corrupt: save or download it again") from err


def _load_run(source: str, hub: dict, model_cfg: ModelConfig, config_file: str) -> RunConfig | None:
    path = _resolve_file(source, RUN_NAME, hub, required=False)
    if path is None:
        warnings.warn(f"{_where(source, RUN_NAME)} not found: this checkpoint does not record its run "
                      f"(data source, held-out split, samples); pass them explicitly where they are "
                      f"needed (e.g. notebook 03's dataset / test_size)", stacklevel=3)
        return None
    try:
        run = RunConfig.load(path)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    mismatch = [f"{k}: {config_file} {v!r}, {path} {getattr(run.model, k)!r}"
                for k, v in model_cfg.to_dict().items()
                if k not in RUNTIME_FIELDS["model"] and getattr(run.model, k) != v]
    if mismatch:
        raise CheckpointError(f"{config_file} and {path} disagree: " + "; ".join(mismatch))
    return replace(run, model=model_cfg)


def _check_state_dict(model: nn.Module, state: dict, weights_file: str, config_file: str):
    expected = model.state_dict()
    wrong = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{len(wrong)} tensor(s) with other shapes: " + "; ".join(wrong[:5])
                + " ..." * (len(wrong) > 5)] if wrong else []
    problems += [f"{what}: {keys[:5]}" + " ..." * (len(keys) > 5) for what, keys in (
        ("missing from the file", sorted(set(expected) - set(state))),
        ("not in the model", sorted(set(state) - set(expected)))) if keys]
    if problems:
        raise CheckpointError(
            f"{weights_file} does not match the config in {config_file} ({model.config.name}, "
            f"{model.config.to_dict()}): " + " | ".join(problems)
            + ". The weights were saved from another configuration.")


# The paper's configurations and their sizes


FAMILIES = {"rnn": "lstm", "ssm": "bysmamba", "att": "attention"}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def config_parameters(cfg: ModelConfig) -> int:
    """Parameter count of a config, built on the meta device (no memory, no RNG use)."""
    with torch.device("meta"):
        return count_parameters(PixelByteModel(cfg))


def paper_config(name: str, **overrides) -> ModelConfig:
    """'rnn_bi_pxby_conv_81_32_2' -> ModelConfig (family_dir_embedding_conv_dim_hidden_depth, objective
    'next'), then ``overrides``. The paper gives no Mamba expand or LSTM projection: rows over its 100k
    budget with the defaults get expand=1 (bysmamba) or proj_size=hidden // 2 (lstm)."""
    parts = name.split("_")
    if len(parts) != 7 or parts[0] not in FAMILIES or parts[1] not in ("bi", "uni") \
            or parts[2] not in EMBEDDINGS or parts[3] not in ("conv", "noconv") \
            or not all(p.isdigit() for p in parts[4:]):
        raise ValueError(f"paper config name {name!r} is not family_dir_embedding_conv_dim_hidden_depth "
                         f"with family in {list(FAMILIES)}, dir bi|uni, embedding {list(EMBEDDINGS)}, "
                         f"conv|noconv, e.g. 'rnn_bi_pxby_conv_81_32_2'")
    dim, hidden, depth = (int(p) for p in parts[4:])
    cfg = ModelConfig(model=FAMILIES[parts[0]], bidirectional=parts[1] == "bi", embedding=parts[2],
                      conv=parts[3] == "conv", dim=dim, hidden=hidden, depth=depth, objective="next")
    if cfg.model != "attention" and config_parameters(cfg) >= PARAMETER_BUDGET:
        cfg = replace(cfg, expand=1) if cfg.model == "bysmamba" else replace(cfg, proj_size=hidden // 2)
    return replace(cfg, **overrides)


# The paper's six best rows and their published generation metrics, (mean, std) over all chunks
# (64-token prompt, 16 greedy tokens, 144 window ids; Hamming lower is better) ...
PAPER_RESULTS_SOURCE = "PixelBytes-Pokemon, Kaggle T4, 200 epochs"
PAPER_RESULTS = {
    "rnn_bi_pxby_conv_81_32_2": {"hamming": (0.149, 0.062), "cosine": (0.899, 0.095), "bleu": (0.785, 0.082)},
    "rnn_bi_pxby_conv_81_64_3": {"hamming": (0.153, 0.063), "cosine": (0.906, 0.087), "bleu": (0.776, 0.086)},
    "rnn_bi_center_noconv_81_64_2": {"hamming": (0.185, 0.074), "cosine": (0.888, 0.083), "bleu": (0.750, 0.093)},
    "ssm_bi_pxby_conv_81_64_2": {"hamming": (0.158, 0.074), "cosine": (0.896, 0.095), "bleu": (0.771, 0.097)},
    "ssm_uni_pxby_conv_81_64_2": {"hamming": (0.166, 0.081), "cosine": (0.886, 0.102), "bleu": (0.760, 0.106)},
    "att_uni_pxby_conv_81_64_2": {"hamming": (0.159, 0.066), "cosine": (0.887, 0.103), "bleu": (0.760, 0.092)},
}
PAPER_BEST = tuple(PAPER_RESULTS)
# ... and nine more: one change at a time along each stated axis (direction, embedding, conv,
# input embedding 36/81/162, hidden state 32/64/128, depth 1/2/3), five per family with the best.
PAPER_ABLATIONS = ("rnn_uni_pxby_conv_81_64_2", "rnn_bi_pxby_conv_162_32_1", "ssm_bi_pxby_noconv_81_64_2",
                   "ssm_bi_center_noconv_81_64_2", "ssm_uni_pxby_conv_36_128_3", "att_bi_pxby_conv_81_64_2",
                   "att_uni_pxby_noconv_81_64_2", "att_uni_center_noconv_81_64_2", "att_uni_pxby_conv_36_32_1")
PAPER_CONFIGS: dict[str, ModelConfig] = {name: paper_config(name) for name in PAPER_BEST + PAPER_ABLATIONS}


def parameter_table(configs: dict[str, ModelConfig]) -> "pandas.DataFrame":
    """One row per config: its fields and parameter counts (embedding, backbone, head, total)."""
    import pandas as pd

    rows, fields = [], ("model", "bidirectional", "embedding", "conv", "dim", "hidden", "depth")
    for name, cfg in configs.items():
        with torch.device("meta"):
            model = PixelByteModel(cfg)
        options = {"lstm": f"proj_size={cfg.proj_size}" if cfg.proj_size else "-",
                   "bysmamba": f"expand={cfg.expand}, d_conv={cfg.d_conv}",
                   "attention": f"heads={cfg.heads}, head_dim={cfg.head_dim}"}
        rows.append({"name": name, **{f: getattr(cfg, f) for f in fields}, "family_options": options[cfg.model],
                     "embedding_params": count_parameters(model.embed),
                     "backbone_params": count_parameters(model.backbone),
                     "head_params": count_parameters(model.norm) + count_parameters(model.head),
                     "total_params": count_parameters(model)})
    table = pd.DataFrame(rows).set_index("name")
    table["under_100k"] = table["total_params"] < PARAMETER_BUDGET
    return table
