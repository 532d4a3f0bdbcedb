"""Evaluation: the paper's generation metrics, computed exactly as originally and always beside
baselines, and token-level metrics. Everything returns plain data (DataFrames or dicts).

- ``paper_metrics``: each sequence is cut into chunks of 80 windows; from the first 64 (the
  prompt) 16 tokens are generated greedily and scored against the last 16 with Hamming, cosine
  similarity and BLEU on the flattened windows, as the original code did. Beside them: the same
  scores on the centre ids only, trivial baselines on the same prompts, and the true tokens (a
  check of the context building). A generated token's window is built from the true tokens
  before it, then the generated ones (where the original code is ambiguous).
- ``token_metrics``: accuracy and bits per token of the model's objective over a dataset, by
  modality of the target token: the same numbers as training's.
Copy tasks live in ``copying``.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.spatial import distance

from . import tokenizer as tok
from .data import evenly_spaced
from .generate import Generator
from .models import loss_sums, metrics_from_sums

CHUNK, PROMPT, GENERATED = 80, 64, 16
METRICS = ("hamming", "cosine", "bleu")


# The three scores, exactly as the original evaluation called them


def _vector(ids) -> np.ndarray:
    # int64, as the original's torch tensors: uint8 dot products would overflow in scipy
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def hamming(reference, generated) -> float:
    """Fraction of positions that differ (scipy)."""
    return float(distance.hamming(_vector(reference), _vector(generated)))


def cosine(reference, generated) -> float:
    """1 - scipy cosine distance of the raw id vectors (nan when one vector is all zeros)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(1.0 - distance.cosine(_vector(reference), _vector(generated)))


def bleu(reference, generated) -> float:
    """nltk sentence BLEU of the ids as strings: one reference, 4-gram uniform weights, no
    smoothing (nltk then returns ~1e-78, not 0, when an n-gram order has no match; its
    warning about that is silenced)."""
    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sentence_bleu([[str(t) for t in _vector(reference).tolist()]],
                                   [str(t) for t in _vector(generated).tolist()]))


def scores(reference, generated) -> dict:
    """Hamming, cosine and BLEU of two equal-size id arrays (flattened)."""
    return {"hamming": hamming(reference, generated), "cosine": cosine(reference, generated),
            "bleu": bleu(reference, generated)}


# The paper's generation metrics


@dataclass
class Chunk:
    item: int              # index of the sequence
    start: int             # first window of the chunk
    indices: np.ndarray    # (chunk,) window indices, wrapped modulo L


def paper_chunks(seqs: list[np.ndarray], chunk: int = CHUNK, max_chunks: int | None = None) -> list[Chunk]:
    """Chunks at starts 0, chunk, 2*chunk, ... < L of every sequence, indices modulo L."""
    out = []
    for i, seq in enumerate(seqs):
        n = len(seq)
        for s in range(0, n, chunk):
            if max_chunks is not None and len(out) >= max_chunks:
                return out
            out.append(Chunk(i, s, (s + np.arange(chunk)) % n))
    return out


def _token_counts(seqs: list[np.ndarray]) -> np.ndarray:
    return np.bincount(np.concatenate([tok.centre_ids(s).reshape(-1) for s in seqs]).astype(np.int64),
                       minlength=tok.VOCAB_SIZE)


def paper_metrics(model, seqs: list[np.ndarray], *, max_chunks: int | None = None,
                  batch_size: int = 128, train_seqs: list[np.ndarray] | None = None, seed: int = 0,
                  chunk: int = CHUNK, prompt_length: int = PROMPT, window: int | None = None,
                  use_state: bool | None = None) -> dict[str, pd.DataFrame]:
    """The original generation metrics of ``model`` (None: baselines only) on the first
    ``max_chunks`` chunks of ``seqs``, beside the baselines. ``train_seqs``: where the
    "most_frequent_train" token is counted (else "most_frequent_data" of ``seqs``); ``seed``:
    the random-ids baseline's.

    Returns {"chunks": one row per (chunk, method): item, start, method, hamming, cosine, bleu
    (144 window ids) and *_centre (16 centre ids); "summary": ``summarize(chunks)``}.
    """
    if not 0 < prompt_length < chunk:
        raise ValueError(f"prompt_length must be in 1..chunk-1 ({chunk - 1}), got {prompt_length}")
    n_new = chunk - prompt_length
    chunks = paper_chunks(seqs, chunk, max_chunks)
    if not chunks:
        raise ValueError("no chunks to evaluate: seqs is empty")
    counts = _token_counts(train_seqs if train_seqs is not None else seqs)
    frequent_name = "most_frequent_train" if train_seqs is not None else "most_frequent_data"
    frequent_token = int(counts.argmax())
    random_ids = np.random.default_rng(seed).integers(0, tok.VOCAB_SIZE, size=(len(chunks), n_new))

    generator = Generator(model, window=window, use_state=use_state) if model is not None else None
    rows = []
    for b0 in range(0, len(chunks), batch_size):
        batch = chunks[b0:b0 + batch_size]
        ids = [tok.centre_ids(seqs[c.item]).astype(np.int64) for c in batch]
        prompts = [i[c.indices[:prompt_length]].tolist() for i, c in zip(ids, batch)]
        histories = [i[:c.start].tolist() for i, c in zip(ids, batch)]
        model_new = None
        if generator is not None:
            gens = generator.generate(
                prompts, n_new, temperature=0.0, histories=histories,
                prompt_windows=[seqs[c.item][c.indices[:prompt_length]] for c in batch])
            model_new = [g.new for g in gens]
        for k, c in enumerate(batch):
            seq, prompt = seqs[c.item], prompts[k]
            reference = seq[c.indices[prompt_length:]]                       # (16, 3, 3)
            builder = tok.ContextBuilder()
            builder.feed(histories[k])
            builder.feed(prompt)
            candidates = {} if model_new is None else {"model": model_new[k]}
            candidates.update({"repeat_last": [prompt[-1]] * n_new, frequent_name: [frequent_token] * n_new,
                               "most_frequent_prompt": [int(np.bincount(prompt).argmax())] * n_new,
                               "random": random_ids[b0 + k].tolist(),
                               "true_tokens": tok.centre_ids(reference).tolist()})
            for method, new in candidates.items():
                windows = copy.deepcopy(builder).feed(new)                    # (16, 3, 3)
                full = scores(reference, windows)
                centre = scores(tok.centre_ids(reference), np.asarray(new))
                rows.append({"item": c.item, "start": c.start, "method": method, **full,
                             **{f"{m}_centre": v for m, v in centre.items()}})
    chunks_df = pd.DataFrame(rows)
    return {"chunks": chunks_df, "summary": summarize(chunks_df)}


def summarize(chunks: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (numpy's, ddof=0, nan ignored) of every score per method, plus the number
    of chunks and of nan cosines (an all-zero id vector has no direction)."""
    cols = [c for c in chunks.columns if c.split("_")[0] in METRICS]
    out = []
    for method, g in chunks.groupby("method", sort=False):
        row = {"method": method, "chunks": len(g), "nan_cosine": int(g["cosine"].isna().sum()),
               "nan_cosine_centre": int(g["cosine_centre"].isna().sum())}
        for c in cols:
            values = g[c].to_numpy(dtype=np.float64)
            row[f"{c}_mean"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            row[f"{c}_std"] = float(np.nanstd(values)) if np.isfinite(values).any() else float("nan")
        out.append(row)
    return pd.DataFrame(out)


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as "mean +- std" strings, the paper's style."""
    out = summary[["method", "chunks"]].copy()
    for m in [c[:-5] for c in summary.columns if c.endswith("_mean")]:
        out[m] = [f"{a:.3f} +- {b:.3f}" for a, b in zip(summary[f"{m}_mean"], summary[f"{m}_std"])]
    return out


# Token-level metrics


def token_metrics(model, dataset, batch_size: int = 64, max_batches: int | None = None) -> pd.DataFrame:
    """Accuracy (argmax) and bits per token of the model's objective over a dataset, overall and
    by modality of the target token: ``models.loss_sums``, as the Trainer's, so the two agree."""
    model_objective = getattr(getattr(model, "config", None), "objective", None)
    data_objective = getattr(dataset, "objective", model_objective)
    if model_objective != data_objective:
        raise ValueError(f"model objective {model_objective!r} does not match the dataset's "
                         f"{data_objective!r}: build the samples with objective={model_objective!r}")
    chosen = evenly_spaced(len(dataset), None if max_batches is None else max_batches * batch_size)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, chosen.tolist()), batch_size=batch_size,
                                         shuffle=False, collate_fn=getattr(dataset, "collate", None))
    params = next(iter(model.parameters()), None)
    device = params.device if params is not None else torch.device("cpu")
    sums = torch.zeros(len(tok.MODALITIES), 3, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in loader:
                x, y, *positions = (t.to(device) for t in batch)
                logits, _ = model(x, None, *positions)                    # (B, L, V)
                sums += loss_sums(*model.select(logits, y)).cpu()
    finally:
        model.train(was_training)
    metrics = metrics_from_sums(sums)
    rows = [{"modality": "all", "tokens": int(sums[:, 0].sum()), "accuracy": metrics["accuracy"],
             "bits_per_token": metrics["bits_per_token"]}]
    rows += [{"modality": name, "tokens": int(sums[k, 0]), "accuracy": metrics[f"acc_{name}"],
              "bits_per_token": metrics[f"bpt_{name}"]} for k, name in enumerate(tok.MODALITIES)]
    return pd.DataFrame(rows)
