"""Train/eval splits: stratified by a field, or grouped so a group never straddles the split."""
from __future__ import annotations

import numpy as np
import pandas as pd

from tunelab.errors import UserError


def train_eval_split(frame: pd.DataFrame, fraction: float, seed: int,
                     stratify_by: str | None = None, group_by: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out about `fraction` of rows.

    Stratified: each stratum contributes round(n * fraction) rows (strata of
    one row stay in train, so every class is trained on). Grouped: whole groups
    move to eval until the fraction is reached.
    """
    if fraction <= 0 or len(frame) < 2:
        return frame, frame.iloc[0:0]
    rng = np.random.default_rng(seed)
    if group_by and group_by in frame.columns:
        keys = frame[group_by].astype(str)
        sizes = keys.value_counts()
        if len(sizes) < 2:
            raise UserError(f"data.group_by: every row has the same `{group_by}`, so no group can be held out; "
                            "set data.eval_path, or split without group_by")
        unique = list(keys.unique())  # a list: numpy's in-place shuffle can duplicate items of pandas' Arrow arrays
        groups = [unique[i] for i in rng.permutation(len(unique))]
        # Whole groups move to eval until the fraction is reached; a group that would overshoot it by half
        # is passed over (one dominant group must not swallow the eval side, nor empty the train side).
        target, taken, chosen = fraction * len(frame), 0, []
        for g in groups:
            if taken >= target:
                break
            if taken + int(sizes[g]) <= max(1.5 * target, 1):
                chosen.append(g)
                taken += int(sizes[g])
        if not chosen:  # every group is big: hold out the smallest one
            chosen = [sizes.index[-1]]
        is_eval = keys.isin(chosen).to_numpy()
    elif stratify_by and stratify_by in frame.columns:
        is_eval = np.zeros(len(frame), dtype=bool)
        positions = pd.Series(np.arange(len(frame))).groupby(frame[stratify_by].astype(str).to_numpy())
        for _, pos in positions:
            pos = pos.to_numpy()
            k = int(round(len(pos) * fraction)) if len(pos) > 1 else 0
            k = min(k, len(pos) - 1)
            if k:
                is_eval[rng.choice(pos, size=k, replace=False)] = True
        if not is_eval.any():  # every stratum tiny: fall back to a random hold-out
            is_eval[rng.choice(len(frame), size=max(1, int(round(len(frame) * fraction))), replace=False)] = True
    else:
        is_eval = np.zeros(len(frame), dtype=bool)
        is_eval[rng.choice(len(frame), size=max(1, int(round(len(frame) * fraction))), replace=False)] = True
    return frame[~is_eval], frame[is_eval]
