"""Evaluation, as plain DataFrames / dicts (copy tasks live in ``copying``).

- ``paper_metrics``: chunks of 80 windows; 16 tokens generated greedily after the first 64 are
  scored against the last 16 (Hamming, cosine, BLEU on the flattened windows, as the original
  code), beside the same on centre ids, trivial baselines and the true tokens. A generated
  token's window is built from the true tokens before it, then the generated ones.
- ``token_metrics``: accuracy and bits per token by modality, the same numbers as training's.
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

CHUNK, PROMPT = 80, 64          # 16 tokens generated after each prompt
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
    """nltk sentence BLEU of the ids as strings: one reference, uniform 4-gram weights, no smoothing
    (so ~1e-78, not 0, when an n-gram order has no match; nltk's warning about it is silenced)."""
    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sentence_bleu([[str(t) for t in _vector(reference).tolist()]],
                                   [str(t) for t in _vector(generated).tolist()]))


def scores(reference, generated) -> dict:
    """Hamming, cosine and BLEU of two equal-size id arrays (flattened)."""
    return {m: score(reference, generated) for m, score in zip(METRICS, (hamming, cosine, bleu))}


# The paper's generation metrics

@dataclass
class Chunk:
    item: int              # index of the sequence
    start: int             # first window of the chunk
    indices: np.ndarray    # (chunk,) window indices, wrapped modulo L


def paper_chunks(seqs: list[np.ndarray], chunk: int = CHUNK, max_chunks: int | None = None) -> list[Chunk]:
    """The first ``max_chunks`` chunks at starts 0, chunk, 2*chunk, ... < L of every sequence, indices modulo L."""
    chunks = [Chunk(i, s, (s + np.arange(chunk)) % len(seq))
              for i, seq in enumerate(seqs) for s in range(0, len(seq), chunk)]
    return chunks[:max_chunks]


def paper_metrics(model, seqs: list[np.ndarray], *, max_chunks: int | None = None,
                  batch_size: int = 128, train_seqs: list[np.ndarray] | None = None, seed: int = 0,
                  chunk: int = CHUNK, prompt_length: int = PROMPT, window: int | None = None,
                  use_state: bool | None = None) -> dict[str, pd.DataFrame]:
    """The original generation metrics of ``model`` (None: baselines only) and the baselines on the first
    ``max_chunks`` chunks of ``seqs`` -> {"chunks": a row per (chunk, method), "summary": ``summarize``}."""
    if not 0 < prompt_length < chunk:
        raise ValueError(f"prompt_length must be in 1..chunk-1 ({chunk - 1}), got {prompt_length}")
    n_new = chunk - prompt_length
    chunks = paper_chunks(seqs, chunk, max_chunks)
    if not chunks:
        raise ValueError("no chunks to evaluate: seqs is empty")
    counted = np.concatenate([tok.centre_ids(s).ravel() for s in (seqs if train_seqs is None else train_seqs)])
    frequent_name = "most_frequent_data" if train_seqs is None else "most_frequent_train"
    frequent_token = int(np.bincount(counted.astype(np.int64), minlength=tok.VOCAB_SIZE).argmax())
    random_ids = np.random.default_rng(seed).integers(0, tok.VOCAB_SIZE, size=(len(chunks), n_new))

    generator = Generator(model, window=window, use_state=use_state) if model is not None else None
    rows = []
    for b0 in range(0, len(chunks), batch_size):
        batch = chunks[b0:b0 + batch_size]
        ids = [tok.centre_ids(seqs[c.item]).astype(np.int64) for c in batch]
        prompts = [i[c.indices[:prompt_length]].tolist() for i, c in zip(ids, batch)]
        histories = [i[:c.start].tolist() for i, c in zip(ids, batch)]
        model_new = None if generator is None else [g.new for g in generator.generate(prompts, n_new, temperature=0.0,
            histories=histories, prompt_windows=[seqs[c.item][c.indices[:prompt_length]] for c in batch])]
        for k, c in enumerate(batch):
            seq, prompt = seqs[c.item], prompts[k]
            reference = seq[c.indices[prompt_length:]]                       # (16, 3, 3)
            builder = tok.ContextBuilder(histories[k] + prompt)
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
    """Mean and std (ddof=0, nan ignored) of every score per method, with the numbers of chunks and nan cosines."""
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
    """Accuracy and bits per token over a dataset, overall and by target modality (``loss_sums``, as training's)."""
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
